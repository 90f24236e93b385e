"""The model `fmae predict` runs: a finished AU or FER run folder, or the one self-contained `.fmae` file
`fmae export` writes from one (weights, encoder, input size, the dataset's AUs or classes, both
thresholds with their labels, the recipe, fmae's version), read back with weights_only=True."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmae import __version__
from fmae.errors import FmaeError
from fmae.summary import Summary

if TYPE_CHECKING:  # torch is imported where weights are read or built: bad input fails before it loads
    import torch
    from torch import Tensor

FORMAT = "fmae-model"
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    task: str  # "au" or "fer"
    dataset: str
    encoder: str  # a model_specs name: vit_tiny, vit_base, …
    input_size: int
    au_codes: list[int]  # AU tasks: the dataset's AUs, in output order
    classes: list[str]  # FER tasks: class names, in output order
    thresholds: dict[str, dict[str, Any]]  # "0.5" / "tuned" -> {"value": float, "label": str}
    recipe: dict[str, Any]  # the run's resolved config
    state: dict[str, Tensor] = field(repr=False)
    origin: dict[str, Any] = field(default_factory=dict)  # where it came from (run, checkpoint, file)
    fmae_version: str = __version__

    def column_names(self) -> list[str]:
        return [f"AU{c:02d}" for c in self.au_codes] if self.task == "au" else list(self.classes)

    def build(self, device: torch.device):
        """The fine-tuned network in eval mode (the identity head of an IAT run is left out: prediction
        never uses it)."""
        from fmae.models.checkpoint import strip_wrappers
        from fmae.models.encoders import create_encoder
        from fmae.models.heads import FineTuneModel

        outputs = len(self.au_codes) if self.task == "au" else len(self.classes)
        model = FineTuneModel(create_encoder(self.encoder, img_size=self.input_size), outputs)
        state = {strip_wrappers(k): v for k, v in self.state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("id_head.")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            where = self.origin.get("model_file") or self.origin.get("checkpoint") or "the model"
            raise FmaeError(f"{where}: its weights do not fit a {self.encoder} with {outputs} outputs "
                            f"({' '.join(str(e).split())[:160]}) — export it again from its run") from None
        return model.to(device).eval()

    def payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "fmae_version": self.fmae_version,
                "task": self.task, "dataset": self.dataset, "encoder": self.encoder, "input_size": self.input_size,
                "au_codes": list(self.au_codes), "classes": list(self.classes), "thresholds": self.thresholds,
                "recipe": self.recipe, "origin": self.origin,
                "model": {k: v.detach().cpu().contiguous() for k, v in self.state.items()}}


PREDICTABLE = ("au", "fer")


def from_run(path: Path) -> ModelBundle:
    """A finished AU or FER run's best checkpoint (last.pt where the run kept no best.pt); anything else is a
    one-line FmaeError naming the run."""
    from fmae.registry import get_dataset
    from fmae.runs import RunDir

    run = RunDir.open(path)
    cfg = run.read_config()
    task = cfg.get("task")
    if cfg.get("eval_checkpoint"):
        raise FmaeError(f"{run.path}: an evaluation run (fmae eval) holds no model — use the run it evaluated, "
                        f"{cfg.get('source_run', 'its source run')}")
    if task not in PREDICTABLE:
        kind = {"pretrain": "a pretraining run (MAE: no AU or expression head)",
                "id_probe": "an identity-probe run (it predicts subjects)",
                "predict": "a prediction run"}.get(str(task), f"a {task!r} run")
        raise FmaeError(f"{run.path}: {kind} — predict from a finished AU or FER fine-tuning run")
    state = run.read_status().get("state")
    if state != "done":
        raise FmaeError(f"{run.path}: the run is {state}, not done — predict from a finished run "
                        "(wait for it, or `fmae exec` it to finish)")
    ckpt_path = run.checkpoints / "best.pt"
    which = "best"
    if not ckpt_path.is_file():
        ckpt_path, which = run.checkpoints / "last.pt", "last"
    if not ckpt_path.is_file():
        raise FmaeError(f"{run.path}: no checkpoints/best.pt or last.pt — the run's weights were removed")
    from fmae.models.checkpoint import extract_state_dict, read_checkpoint

    ckpt = read_checkpoint(ckpt_path)
    weights = extract_state_dict(ckpt, ckpt_path)
    spec = get_dataset(str(cfg["dataset"]))
    summary = Summary.read(run) or Summary()
    epoch = ckpt.get("epoch")
    thresholds = {"0.5": {"value": 0.5, "label": "0.5 (fixed)"}}
    if task == "au":
        best = (summary.best if which == "best" else summary.last) or {}
        tuned = best.get("best_threshold")
        if isinstance(tuned, (int, float)):
            thresholds["tuned"] = {
                "value": float(tuned),
                "label": f"{float(tuned):.2f}: the single best threshold, tuned on the test fold "
                         f"(fold {cfg.get('fold')}) of run {run.id}, epoch {best.get('epoch', epoch)} — "
                         "as the paper reports; not chosen on held-out data"}
    return ModelBundle(
        task=str(task), dataset=spec.name, encoder=str(cfg["model"]), input_size=int(cfg["input_size"]),
        au_codes=list(spec.au_codes) if task == "au" else [], classes=list(spec.classes) if task == "fer" else [],
        thresholds=thresholds if task == "au" else {}, recipe=dict(cfg), state=weights,
        origin={"run": run.id, "run_path": str(run.path.resolve()), "checkpoint": str(ckpt_path.resolve()),
                "checkpoint_epoch": epoch, "which": which})


def from_file(path: Path) -> ModelBundle:
    """An exported `.fmae` file (weights_only loading: the file cannot run code)."""
    from fmae.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise FmaeError(f"{path}: not an fmae model file (no format = '{FORMAT}') — write one with "
                        "`fmae export RUN_DIR --out NAME.fmae`, or pass the run itself with --run")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise FmaeError(f"{path}: written by a newer fmae ({ckpt.get('fmae_version')}, format "
                        f"{ckpt.get('format_version')}) — upgrade fmae to read it")
    try:
        return ModelBundle(
            task=str(ckpt["task"]), dataset=str(ckpt["dataset"]), encoder=str(ckpt["encoder"]),
            input_size=int(ckpt["input_size"]), au_codes=[int(c) for c in ckpt["au_codes"]],
            classes=[str(c) for c in ckpt["classes"]], thresholds=dict(ckpt["thresholds"]),
            recipe=dict(ckpt["recipe"]), state=dict(ckpt["model"]),
            origin={**dict(ckpt.get("origin") or {}), "model_file": str(Path(path).resolve())},
            fmae_version=str(ckpt.get("fmae_version", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise FmaeError(f"{path}: an incomplete fmae model file (bad or missing {e}) — export it again") from None


def parse_threshold(text: str) -> str | float:
    """`--threshold`'s text: "tuned", or a number in (0, 1); checked before any model loads."""
    text = str(text).strip()
    if text == "tuned":
        return text
    try:
        value = float(text)
    except ValueError:
        raise FmaeError(f"--threshold {text}: use 0.5, tuned, or a number between 0 and 1") from None
    if not 0.0 < value < 1.0:
        raise FmaeError(f"--threshold {text}: must be between 0 and 1 (exclusive)")
    return value


def load_model(run: Path | None, model_file: Path | None) -> ModelBundle:
    if (run is None) == (model_file is None):
        raise FmaeError("give exactly one of --run RUN_DIR (a finished AU or FER run) or --model FILE.fmae")
    return from_run(run) if run is not None else from_file(model_file)


def export(run: Path, out: Path) -> ModelBundle:
    """Write `out` (one self-contained file) from a finished run; atomically, so a failed write leaves
    whatever was there."""
    from fmae.models.checkpoint import save_checkpoint

    if out.suffix != ".fmae":
        raise FmaeError(f"--out {out}: name the file NAME.fmae")
    if out.is_dir():
        raise FmaeError(f"--out {out}: is a folder — name a file NAME.fmae")
    bundle = from_run(run)
    bundle.origin = {k: v for k, v in bundle.origin.items() if k != "run_path"}  # a path of this machine
    save_checkpoint(out, bundle.payload())
    return bundle
