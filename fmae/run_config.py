"""A run's fully resolved configuration: engine defaults < the paper's recipe < the model's own
defaults < fmae.toml < the command line, each value's source recorded.

The result is one flat mapping (one key per field of `run_spec`'s sections), frozen into the run
folder's `run.toml` in sections and into every checkpoint; `fmae exec` trains from it and nothing else.
No torch here: the queue and the app resolve configs too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fmae.config import ProjectConfig, Resolved, layer
from fmae.data.locate import dataset_location, ensure_dataset, missing_labels
from fmae.errors import FmaeError
from fmae.model_specs import encoder_spec
from fmae.recipes import ID_PROBE, PRETRAIN, explicit_keys, finetune_recipe
from fmae.registry import get_dataset
from fmae.run_spec import RETIRED_KEYS, choices, dotted, every_run_defaults, sectioned

TASKS = ("au", "fer", "id_probe", "pretrain")


# `init = "fmae:NAME"` names a checkpoint shipped inside the package (fmae/assets/NAME.pth, e.g. the
# demo's MAE-pretrained vit_tiny), so a recipe can point at it wherever fmae is installed.
PACKAGED = "fmae:"


def packaged_init(init: str) -> Path:
    """The file behind `fmae:NAME`; a one-line FmaeError naming the choices when there is none."""
    name = init.removeprefix(PACKAGED)
    assets = Path(__file__).resolve().parent / "assets"
    path = assets / f"{name}.pth"
    if not name or "/" in name or "\\" in name or not path.is_file():
        have = ", ".join(PACKAGED + p.stem for p in sorted(assets.glob("*.pth"))) or "none"
        raise FmaeError(f"init = {init!r}: no such packaged checkpoint (packaged: {have}) — or give a file path")
    return path


Layer = tuple[str, Mapping[str, Any]]


def _layered(lower: list[Layer], upper: list[Layer]) -> Resolved:
    """The layers, lowest first. `lower` (engine defaults < recipe < model) define which keys the run
    has; `upper` (fmae.toml, its overrides, the command line) may only set those (`config.layer`)."""
    known: dict[str, Any] = {}
    for _, values in lower:
        known.update(values)
    values = layer(("", known), *upper).values
    sources: dict[str, str] = {}
    for name, layer_values in [*lower, *upper]:
        sources.update(dict.fromkeys(layer_values, name))
    return Resolved(values, sources)


def _chosen(key: str, layers: list[Layer], default: Any) -> Any:
    """What the highest layer holding `key` says (before the layers are merged: the model decides
    which model-owned defaults join the lower layers)."""
    for _, values in reversed(layers):
        if key in values:
            return values[key]
    return default


def _model_layer(model: str, recipe: Mapping[str, Any], keys: tuple[str, ...]) -> Layer:
    """The model's own defaults (timm's explicit > model > global): above the recipe, below fmae.toml
    and the command line. Only what differs from the recipe, so the rest keeps the recipe's name."""
    spec = encoder_spec(model)
    owned = {k: getattr(spec, k) for k in keys if k in recipe and getattr(spec, k) != recipe[k]}
    return (f"model {spec.name}", owned)


def _project_layers(project: ProjectConfig, dataset: str | None, cli: Mapping[str, Any]) -> list[Layer]:
    toml_layer: dict[str, Any] = {}
    if project.defaults.get("model"):
        toml_layer["model"] = project.defaults["model"]
    if project.defaults.get("init") and dataset is not None:
        toml_layer["init"] = project.defaults["init"]
    if project.device != "auto":
        toml_layer["device"] = project.device
    layers: list[Layer] = [(f"{project.label}", toml_layer)]
    if dataset is not None:
        layers.append((f"{project.label} [overrides.{dataset}]", project.overrides.get(dataset, {})))
    return [*layers, ("command line", cli)]


def _task_of(dataset: str, probe: bool) -> str:
    if probe:
        return "id_probe"
    return get_dataset(dataset).task


def resolve_run_config(
    project: ProjectConfig,
    dataset: str,
    *,
    probe: bool = False,
    recipe: str | None = None,
    fold: int | None = None,
    seed: int = 0,
    cli: Mapping[str, Any] | None = None,
    root: Path | None = None,
    labels: Path | None = None,
    generate: bool = True,
) -> Resolved:
    """Layer the engine defaults, the recipe, the model's own defaults, fmae.toml's defaults and
    overrides, and the command line into one config.

    `cli` holds the command line's explicit choices (options and --set pairs), already parsed.
    """
    spec = get_dataset(dataset)
    task = _task_of(spec.name, probe)
    cli = dict(cli or {})
    if task == "id_probe":
        if spec.task != "au":
            raise FmaeError(f"identity probing needs an AU dataset with subjects; {spec.name} has none")
        recipe_name = "id_probe"
        base = dict(ID_PROBE)
    else:
        recipe_name = recipe or project.defaults.get("recipe", "fmae")
        if spec.task == "fer" and recipe is None:
            recipe_name = "fmae"  # FER has one recipe; a project default of fmae_iat means the AU runs
        base = finetune_recipe(spec.name, recipe_name)
    engine = {k: v for k, v in every_run_defaults().items() if k not in base}
    upper = _project_layers(project, spec.name, cli)
    lower: list[Layer] = [("engine default", engine), (f"recipe {spec.name}/{recipe_name}", base)]
    model = str(_chosen("model", [*lower, *upper], ""))
    # the model's input size, unless the recipe's own row chose one (the demo's 32 px)
    chosen = task != "id_probe" and "input_size" in explicit_keys(spec.name, recipe_name)
    owned = () if chosen else ("input_size",)
    resolved = _layered([*lower, _model_layer(model, base, owned)], upper)
    values, sources = resolved.values, resolved.sources
    _cap_warmup(values, sources, cli)
    _check_values(values)
    if values["data_cache"] not in ("auto", "off"):  # a folder: absolute, so the run finds it from anywhere
        values["data_cache"] = str(Path(values["data_cache"]).expanduser().resolve())
    if str(values["init"]).startswith(PACKAGED):
        values["init"] = str(packaged_init(str(values["init"])))
        sources["init"] += f" ({PACKAGED}… = fmae/assets/)"

    # What identifies the run (never overridable with --set).
    values.update(task=task, dataset=spec.name, recipe=recipe_name, seed=int(seed))
    sources.update(task="command", dataset="command", recipe="command", seed="command line")
    if task == "au":
        if fold is None:
            raise FmaeError(f"--fold is required for {spec.name}: choose 1..{spec.num_folds}")
        values["fold"] = spec.check_fold(fold)
    else:
        values["fold"] = 0  # FER benchmarks have one train/test split; a probe reads every subject
        values["lambda_id"] = 0.0
    sources["fold"] = "command line"

    loc = dataset_location(project, spec, root, labels)
    if spec.task == "au" and not (loc.labels or (loc.train_labels and loc.test_labels)):
        raise missing_labels(spec, loc)  # before any run folder exists, dry run included
    if generate:
        loc = ensure_dataset(spec, loc)
    return with_locations(project, Resolved(values, sources), loc)


def with_locations(project: ProjectConfig, resolved: Resolved, loc: Any) -> Resolved:
    """The data section's locations (how the run finds its data, never part of the experiment)."""
    values, sources = resolved.values, resolved.sources
    values.update(
        data_root=str(loc.root or ""),
        labels=str(loc.labels or ""),
        train_labels=loc.train_labels or "",
        test_labels=loc.test_labels or "",
    )
    for key in ("data_root", "labels", "train_labels", "test_labels"):
        sources[key] = loc.origin
    for key in ("labels", "train_labels", "test_labels"):
        sources[key] = loc.labels_origin or loc.origin
    values["max_image_pixels"] = project.max_image_pixels  # how images are read, not what is trained
    sources["max_image_pixels"] = project.label
    return resolved


def cap_warmup(values: dict[str, Any], sources: dict[str, str]) -> None:
    """A short run (`--epochs 1` to try things out) keeps the recipe's warmup only up to its length."""
    if values["warmup_epochs"] > values["epochs"]:
        values["warmup_epochs"] = values["epochs"]
        sources["warmup_epochs"] += f" (capped at epochs = {values['epochs']})"


def _cap_warmup(values: dict[str, Any], sources: dict[str, str], cli: Mapping[str, Any]) -> None:
    if "warmup_epochs" not in cli:  # a warmup the command line asked for is the user's: checked, not capped
        cap_warmup(values, sources)


def config_warnings(cfg: Mapping[str, Any], steps_per_epoch: int | None = None) -> list[str]:
    """What in a resolved config will probably keep the run from learning, one sentence each, naming the
    numbers (empty when nothing). `steps_per_epoch` (optimizer steps) turns epochs into steps when known.

    Torch-free: `fmae train --dry-run`, the trainer's log and the app's Launch plan all call it.
    """
    warnings: list[str] = []
    epochs, warmup = float(cfg.get("epochs") or 0), float(cfg.get("warmup_epochs") or 0)
    if epochs > 0 and warmup / epochs >= 0.5:
        def n(x: float) -> str:
            return f"{x:g} epoch{'' if x == 1 else 's'}"

        if steps_per_epoch:
            total = int(steps_per_epoch * epochs)
            span = f"warmup {n(warmup)} = {int(round(steps_per_epoch * warmup))} of {total} steps"
        else:
            span = f"warmup {warmup:g} of {n(epochs)} ({warmup / epochs:.0%} of the steps)"
        if warmup >= epochs:
            effect = "the lr never leaves warmup (it reaches its peak only at the last step)"
        else:
            effect = (f"the lr reaches its peak only after {warmup / epochs:.0%} of the run, leaving "
                      f"{n(epochs - warmup)} to learn at it")
        warnings.append(f"{span}: {effect} — train longer (--epochs) or shorten the warmup "
                        "(--set warmup_epochs=…)")
    return warnings


def _check_values(v: Mapping[str, Any]) -> None:
    """Ranges here; the choices of a `Literal` field come from its section (`run_spec.choices`)."""
    positive = ("batch_size", "epochs", "input_size", "accum_iter", "log_every")
    for key in positive:
        if key in v and int(v[key]) < 1:
            raise FmaeError(f"{key} = {v[key]}: must be at least 1")
    for key in ("blr", "weight_decay", "min_lr", "clip_grad", "lambda_id", "drop_path", "random_erase_prob"):
        if key in v and float(v[key]) < 0:
            raise FmaeError(f"{key} = {v[key]}: must not be negative")
    if v.get("warmup_epochs", 0) < 0 or v.get("warmup_epochs", 0) > v["epochs"]:
        raise FmaeError(f"warmup_epochs = {v['warmup_epochs']}: must be between 0 and epochs ({v['epochs']})")
    if "crop_scale" in v and not 0 < float(v["crop_scale"]) <= 1:
        raise FmaeError(f"crop_scale = {v['crop_scale']}: must be in (0, 1] (the smallest crop's share of the image)")
    if "layer_decay" in v and not 0 < float(v["layer_decay"]) <= 1:
        raise FmaeError(f"layer_decay = {v['layer_decay']}: must be in (0, 1]")
    if "data_cache" in v and not str(v["data_cache"]).strip():
        raise FmaeError("data_cache = '': give \"auto\", \"off\" or the folder of a pixel cache (`fmae data cache`)")
    for key in v:
        allowed = choices(key)
        if allowed is not None and v[key] not in allowed:
            raise FmaeError(f"{key} = '{v[key]}': choose one of {', '.join(allowed)}")


# MAE pretraining beyond the paper's recipe table: the decoder (MAE's default 8 blocks × 512; a model
# may own a smaller one, see `model_specs.EncoderSpec.decoder_dim`) and the schedule's floor.
PRETRAIN_EXTRA: Mapping[str, Any] = {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16,
                                     "min_lr": 0.0, "accum_iter": 1, "save_best": False}


def resolve_pretrain_config(project: ProjectConfig, data: list[Path], *, seed: int = 0,
                            cli: Mapping[str, Any] | None = None) -> Resolved:
    """MAE pretraining: the paper's recipe (batch per model size) < the model's own decoder and input
    size < fmae.toml < the command line."""
    cli = dict(cli or {})
    if not data:
        raise FmaeError("--data: name at least one image store (`fmae data lmdb`) or image folder")
    missing = [p for p in data if not p.exists()]
    if missing:
        raise FmaeError(f"--data {missing[0]}: no such store or folder")
    upper = _project_layers(project, None, cli)
    model = encoder_spec(str(_chosen("model", upper, every_run_defaults()["model"]))).name
    base = {k: v for k, v in PRETRAIN.items() if k not in ("batch_size", "gpus")}
    base["betas"] = list(base["betas"])
    base["batch_size"] = PRETRAIN["batch_size"].get(model, 64)
    base.update(PRETRAIN_EXTRA)
    engine = {k: v for k, v in every_run_defaults().items() if k not in base}
    owned = _model_layer(model, base, ("input_size", "decoder_dim", "decoder_depth", "decoder_heads"))
    resolved = _layered([("engine default", engine), ("recipe pretrain", base), owned], upper)
    values, sources = resolved.values, resolved.sources
    _cap_warmup(values, sources, cli)
    _check_values(values)
    if not 0 < float(values["mask_ratio"]) < 1:
        raise FmaeError(f"mask_ratio = {values['mask_ratio']}: must be between 0 and 1")
    if int(values["decoder_dim"]) % int(values["decoder_heads"]):
        raise FmaeError(f"decoder_dim {values['decoder_dim']} must be a multiple of decoder_heads {values['decoder_heads']}")
    values.update(task="pretrain", dataset=_data_name(data), recipe="pretrain", seed=int(seed), fold=0, lambda_id=0.0,
                  data=[str(p.resolve()) for p in data])
    for key in ("task", "dataset", "recipe", "seed", "fold", "lambda_id", "data"):
        sources[key] = "command line"
    values["max_image_pixels"] = project.max_image_pixels
    sources["max_image_pixels"] = project.label
    return Resolved(values, sources)


def _data_name(data: list[Path]) -> str:
    import re

    if len(data) > 1:
        return "mix"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", data[0].resolve().name).strip("._-") or "images"
    return name[:40]


def run_name_parts(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a run id is made of (see fmae.runs.make_run_id)."""
    task = config["task"]
    return dict(
        dataset=config["dataset"],
        model=config["model"],
        seed=int(config["seed"]),
        fold=int(config["fold"]) if task == "au" else None,
        lambda_id=float(config["lambda_id"]) if task == "au" else None,
        task={"au": "train", "fer": "train", "id_probe": "idprobe"}.get(task, task),
    )


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """Where and how a run was made; no torch import (the queue calls this too)."""
    import platform
    import socket
    import subprocess
    import sys
    from importlib import metadata

    from fmae import __version__

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return ""

    commit = ""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "fmae_version": __version__, "git_commit": commit,
        "command": list(command if command is not None else sys.argv),
        "host": socket.gethostname(), "python": platform.python_version(),
        "torch": version("torch"), "timm": version("timm"),
    }


def create_run(runs_dir: Path, resolved: Resolved, name: str | None = None, command: list[str] | None = None):
    """A new run folder holding the resolved config (state queued); `fmae exec` trains it."""
    from fmae.runs import RunDir, make_run_id

    run_id = make_run_id(**run_name_parts(resolved.values), name=name)
    prov = provenance(command)
    values = {k: v for k, v in resolved.values.items() if k not in RETIRED_KEYS}  # e.g. from `--from` an old run
    prov["set_by"] = {dotted(k): v for k, v in sorted(resolved.sources.items(), key=lambda kv: dotted(kv[0]))
                      if k not in RETIRED_KEYS}
    return RunDir.create(runs_dir, run_id, sectioned(values), prov)
