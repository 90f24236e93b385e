"""One run's numbers for the results tables: what to score (`Scoring`), the row a run belongs to
(`group_fields`, `group_label`), and `score_run`, which reads summary.json or re-scores the saved test
predictions (predictions/best.npz) through fmae.metrics. No torch: the app imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from fmae.errors import FmaeError
from fmae.metric_catalogue import F1_BEST, REPORT_METRICS
from fmae.registry import get_dataset, shared_au_codes
from fmae.run_spec import canonical_json
from fmae.runs import RunDir, RunInfo
from fmae.summary import Summary

# --metric name -> (summary.json's per-AU record key, label), from the metric catalogue
METRICS: dict[str, tuple[str, str]] = {name: (m.per_au or m.key, m.title) for name, m in REPORT_METRICS.items()}
EPOCHS = ("best", "last")
TUNED, PER_AU = "test-tuned", "per-au"


# --- what to score ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scoring:
    """Which number a table shows: `metric` (f1 = F1@0.5, f1_best = the paper's test-tuned F1, auc),
    which epoch's (`best` = the run's best epoch, as the paper; `last`), and optionally a `threshold`
    policy to re-score the saved predictions with: a number, "test-tuned" (one threshold for all AUs,
    the paper's) or "per-au" (each AU its own, also tuned on test)."""

    metric: str = "f1"
    epoch: str = "best"
    threshold: str | None = None

    def checked(self) -> Scoring:
        if self.metric not in METRICS:
            raise FmaeError(f"--metric {self.metric}: choose f1 (F1@0.5), f1_best (F1 at the best threshold, "
                            "tuned on test: the paper's) or auc")
        if self.epoch not in EPOCHS:
            raise FmaeError(f"--epoch {self.epoch}: choose best (the run's best epoch, as the paper) or last")
        if self.threshold is None:
            return self
        policy = parse_threshold(self.threshold)
        if self.metric == "auc":
            raise FmaeError("--threshold re-scores F1; AUC has no threshold (use --metric f1)")
        if self.metric == "f1_best" and policy != TUNED:
            raise FmaeError(f"--metric f1_best is F1 at the test-tuned threshold; for --threshold {self.threshold} "
                            "use --metric f1")
        if self.epoch != "best":
            raise FmaeError("--threshold re-scores predictions/best.npz, which holds the best epoch's outputs "
                            "only: use --epoch best")
        return Scoring(self.metric, self.epoch, policy)

    @property
    def rescoring(self) -> bool:
        return self.threshold is not None

    def value_label(self, task: str) -> str:
        """What each number of a table is, with its unit."""
        if task == "fer":
            return "top-1 accuracy (%)"
        if task == "id_probe":
            return "identity top-1 accuracy, linear probe (%)"
        if self.threshold is None:
            return f"{METRICS[self.metric][1]} (%)"
        if self.threshold == TUNED:
            return f"{F1_BEST.title} (%), re-scored from saved predictions"
        if self.threshold == PER_AU:
            return "F1 at per-AU thresholds (each tuned on test) (%), re-scored from saved predictions"
        return f"F1@{self.threshold} (%), re-scored from saved predictions"

    def epoch_label(self) -> str:
        if self.epoch == "best":
            return "epoch: best (each run's best epoch, chosen on the test set as the paper does)"
        return "epoch: last evaluated"

    @property
    def like_paper(self) -> bool:
        """Whether AU numbers measure what the paper's tables do (F1 at one test-tuned threshold)."""
        return self.metric == "f1_best" or self.threshold == TUNED

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "epoch": self.epoch, "threshold": self.threshold}


def parse_threshold(text: str) -> str:
    """A threshold policy: "test-tuned", "per-au" or a number in [0, 1] written canonically ("0.3")."""
    key = str(text).strip().lower()
    if key in ("test-tuned", "tuned", "paper", "best"):
        return TUNED
    if key in ("per-au", "per_au", "perau"):
        return PER_AU
    try:
        t = float(key)
    except ValueError:
        t = math.nan
    if not 0.0 <= t <= 1.0:
        raise FmaeError(f"--threshold {text}: give a number in [0, 1] (e.g. 0.5), test-tuned (one threshold "
                        "for all AUs, tuned on test: the paper's) or per-au (each AU tuned on test)")
    return f"{t:g}"


# --- one run ---------------------------------------------------------------------------------------------

def canonical_value(value: Any) -> Any:
    """A config value as a hashable group key, equal where the experiment key's values are equal
    (`run_spec.canonical_json`: λ = 2.0 and 2 are one group); lists become tuples, tables sorted pairs."""
    return _hashable(canonical_json(value))


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def num(value: Any) -> str:
    """2.0 -> "2", 0.5 -> "0.5": numbers as people write them in a label."""
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


@dataclass
class RunRef:
    """A selected run as the grouping sees it (any state): its group key and its cell."""

    info: RunInfo
    task: str
    dataset: str
    fold: int | None
    seed: int
    key: tuple  # (task, dataset, ((field, value), …)): the row it belongs to

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def tested_on(self) -> str | None:
        """The other benchmark this run was scored on (a cross-dataset eval), else None."""
        return tested_on(self.key[2]) if len(self.key) > 2 else None

    @property
    def state(self) -> str:
        return self.info.state


@dataclass
class RunScore:
    """One run's numbers: `values` per column ("AU1"… or "top1") as fractions 0..1 (NaN: undefined)."""

    ref: RunRef
    values: dict[str, float]
    epoch: int | None
    threshold: float | dict[str, float] | None  # the threshold(s) the F1s were taken at
    source: str  # where the numbers came from
    summary: Summary | None = field(default=None, repr=False, compare=False)  # as parsed for these numbers

    @property
    def run_id(self) -> str:
        return self.ref.id


def group_fields(cfg: dict[str, Any], by: Iterable[str], probed: str | None = None) -> tuple:
    """The fields that name a row: model, recipe, λ (AU), the probed encoder (probe), then --by keys."""
    task = cfg.get("task")
    fields: list[tuple[str, Any]] = [("model", cfg.get("model"))]
    if task == "id_probe":
        fields.append(("probed", probed))
    else:
        fields.append(("recipe", cfg.get("recipe")))
    if task == "au":
        lam = cfg.get("lambda_id")
        fields.append(("lambda_id", canonical_value(float(lam)) if isinstance(lam, (int, float)) else lam))
        depth = cfg.get("id_head_depth")
        if isinstance(depth, int) and depth != 1 and "id_head_depth" not in by:  # the ablation's MLP heads
            fields.append(("id_head_depth", depth))
        if cfg.get("eval_dataset"):  # `fmae eval --dataset`: a model scored on another benchmark's frames
            fields.append(("tested_on", str(cfg["eval_dataset"])))
    fields += [(key, canonical_value(cfg.get(key))) for key in by]
    return tuple(fields)


def group_label(fields: Iterable[tuple[str, Any]]) -> str:
    """"vit_base fmae_iat λ=2 epochs=30": what a row is called in every table."""
    parts = []
    for name, value in fields:
        if name in ("model", "recipe"):
            parts.append(str(value))
        elif name == "lambda_id":
            parts.append(f"λ={num(value)}")
        elif name == "probed":
            parts.append(f"probing {value}")
        elif name == "tested_on":
            parts.append(f"tested on {value}")
        else:
            parts.append(f"{name}={num(value)}")
    return " ".join(parts)


def tested_on(fields: Iterable[tuple[str, Any]]) -> str | None:
    """The other benchmark a cross-dataset row was scored on (None for a benchmark's own rows)."""
    return dict(fields).get("tested_on")


def au_columns(dataset: str, other: str | None = None) -> list[str]:
    """The AUs a row scores: the benchmark's, or (cross-dataset) those it shares with `other`."""
    return [f"AU{c}" for c in shared_au_codes(dataset, other)] if other else get_dataset(dataset).au_names()

def _fraction(value: Any, what: str, allow_nan: bool = False) -> float:
    if value is None and allow_nan:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise FmaeError(f"{what} = {value!r}: expected a number in [0, 1]")
    return float(value)


def score_run(ref: RunRef, scoring: Scoring) -> RunScore:
    """The run's numbers under `scoring`, from summary.json or (re-scoring) predictions/best.npz.
    FmaeError (one line) when the folder cannot give them."""
    info = ref.info
    if info.problem:
        raise FmaeError(info.problem)
    if ref.task == "au" and scoring.rescoring:
        return _rescore(ref, scoring)
    if not info.summary:
        raise FmaeError("no summary.json yet (no evaluation has finished)")
    summary = Summary.from_json(info.summary)  # once: the rows' degenerate check reads it too
    record = summary.record(scoring.epoch)
    if record is None:
        raise FmaeError(f"summary.json has no '{scoring.epoch}' record")
    epoch = record.get("epoch") if isinstance(record.get("epoch"), int) else None
    if ref.task != "au":
        return RunScore(ref, {"top1": _fraction(record.get("accuracy"), "summary.json accuracy")}, epoch, None,
                        f"summary.json ({scoring.epoch})", summary)
    key = METRICS[scoring.metric][0]
    per_au = record.get(key)
    if not isinstance(per_au, dict):
        raise FmaeError(f"summary.json: the {scoring.epoch} record has no per-AU '{key}'")
    values = {}
    for name in au_columns(ref.dataset, ref.tested_on):
        if name not in per_au:
            raise FmaeError(f"summary.json: '{key}' has no {name}")
        values[name] = _fraction(per_au[name], f"summary.json {key}.{name}", allow_nan=scoring.metric == "auc")
    threshold = {"f1": 0.5, "f1_best": record.get("best_threshold")}.get(scoring.metric)
    return RunScore(ref, values, epoch, threshold, f"summary.json ({scoring.epoch})", summary)


def _rescore(ref: RunRef, scoring: Scoring) -> RunScore:
    import zipfile

    import numpy as np

    from fmae.metrics import au_scores, f1_per_threshold

    spec = get_dataset(ref.dataset)
    other = ref.tested_on
    wanted = [int(n[2:]) for n in au_columns(ref.dataset, other)]
    path = RunDir(ref.info.path).predictions / "best.npz"
    if not path.is_file():
        raise FmaeError("no predictions/best.npz to re-score (the run saved no test predictions)")
    try:
        with np.load(path, allow_pickle=False) as data:
            probs, labels = np.asarray(data["probs"]), np.asarray(data["labels"])
            codes = [int(c) for c in data["au_codes"]] if "au_codes" in data.files else list(spec.au_codes)
            epoch = int(data["epoch"]) if "epoch" in data.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise FmaeError(f"predictions/best.npz: unreadable ({' '.join(str(e).split())[:120]})") from None
    if sorted(codes) != sorted(wanted) or len(codes) != probs.shape[-1]:
        whose = f"the AUs {spec.name} and {other} share" if other else f"{spec.name}'s"
        raise FmaeError(f"predictions/best.npz: AUs {codes} are not {whose} {wanted}")
    order = [codes.index(c) for c in wanted]  # columns in the benchmark's AU order
    probs, labels = probs[:, order], labels[:, order]
    names = [f"AU{c}" for c in wanted]
    if scoring.threshold == TUNED:
        s = au_scores(probs, labels)
        f1, threshold = s.f1_best, s.best_threshold
    elif scoring.threshold == PER_AU:
        s = au_scores(probs, labels)
        f1, threshold = s.f1_per_au_tuned, dict(zip(names, map(float, s.per_au_thresholds)))
    else:
        threshold = float(scoring.threshold)  # type: ignore[arg-type]
        f1 = f1_per_threshold(probs, labels, [threshold])[0]
    values = {name: float(v) for name, v in zip(names, f1)}
    return RunScore(ref, values, epoch, threshold, "predictions/best.npz")
