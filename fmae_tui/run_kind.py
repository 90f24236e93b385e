"""What kind of run a folder holds (AU fine-tune, FER, pretraining, identity probe, eval, prediction) and
what is worth showing for that kind: its own fields (a fold and λ only where they mean something) and its
headline number, labelled. Shared by the Runs table, the line under it and the Run screen."""

from __future__ import annotations

import math
from typing import Any

from fmae.metric_catalogue import F1_05, METRICS
from fmae.summary import Summary, as_summary, degenerate_threshold

# kind -> (short name for an 80-column table, long name)
KINDS = {"au": ("AU", "AU fine-tune"), "fer": ("FER", "FER"), "pretrain": ("MAE", "MAE pretrain"),
         "probe": ("probe", "identity probe"), "eval": ("eval", "eval"), "predict": ("pred", "prediction")}

# What summary.json's `metric` is, in a few characters; every number shown carries one of these.
METRIC_SHORT = {key: m.short for key, m in METRICS.items()}
METRIC_LONG = {key: m.long for key, m in METRICS.items()}


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def au_loss(record: dict[str, Any]) -> tuple[str, Any]:
    """The loss to plot of a train record, and its key: the AU loss alone where the trainer wrote one (with
    λ > 0 `loss` holds the identity term too, and λ 0 and λ 2 would not compare), else the total."""
    au = record.get("loss_au")
    key = "loss_au" if isinstance(au, (int, float)) and not isinstance(au, bool) else "loss"
    return key, record.get(key)


def run_kind(config: dict[str, Any]) -> str:
    """One of KINDS. An eval run keeps its source's task but has an `eval_checkpoint`."""
    if config.get("eval_checkpoint"):
        return "eval"
    task = str(config.get("task") or "")
    return "probe" if task == "id_probe" else task or "au"


def kind_label(config: dict[str, Any], wide: bool = False) -> str:
    kind = run_kind(config)
    names = KINDS.get(kind)
    return names[1 if wide else 0] if names else kind


def cell_fields(config: dict[str, Any]) -> str:
    """The cell of a study this run is: "f1 s0 λ2" for AU work (fine-tune, or an eval of one), "s0" else."""
    seed = config.get("seed")
    parts = [] if seed is None else [f"s{seed}"]
    if config.get("task") == "au":
        lam = number(config.get("lambda_id"))
        if config.get("fold") is not None:
            parts.insert(0, f"f{config['fold']}")
        if lam is not None:
            parts.append(f"λ{lam:g}")
    return " ".join(parts)


def short_metric(summary: Summary | dict[str, Any] | None) -> str:
    metric = as_summary(summary).metric or ""
    return METRIC_SHORT.get(metric, metric)


def headline(summary: Summary | dict[str, Any] | None) -> tuple[float | None, str]:
    """(value, short label) of the number that sums this run up: the best epoch's score for fine-tuning
    and probes, the evaluation for an eval run, the last epoch's loss for pretraining (it has no test
    split to pick a best epoch by, so its summary has no best value)."""
    value, _ = headline_at(summary)
    return value, short_metric(summary)


def headline_at(summary: Summary | dict[str, Any] | None) -> tuple[float | None, Any]:
    """(headline value, the epoch it is from)."""
    return as_summary(summary).headline()


def best_threshold(summary: Summary | dict[str, Any] | None) -> float | None:
    return as_summary(summary).best_threshold


def is_degenerate(summary: Summary | dict[str, Any] | None) -> bool:
    """summary.json's own `degenerate` flag when the trainer wrote one, else the best threshold at the
    grid's edge (every AU predicted present, or none): its F1 is the trivial one."""
    s = as_summary(summary)
    return s.degenerate if s.degenerate is not None else degenerate_threshold(s.best_threshold)


def degenerate_text(summary: Summary | dict[str, Any] | None) -> str:
    t = best_threshold(summary)
    what = "every AU predicted present" if t is not None and t < 0.5 else "no AU predicted"
    where = f"best threshold {t:g}" if t is not None else "best threshold at the grid's edge"
    return f"⚠ degenerate: {where} = {what}"


def beside_all_positive(summary: Summary | dict[str, Any] | None) -> str:
    """An AU run's best epoch beside predicting every AU present: a best-threshold F1 is never below the
    all-positive F1, so only F1@0.5 above it shows the run has learned. "" for other kinds."""
    s = as_summary(summary)
    best, positive = s.best or {}, number(s.f1_all_positive_mean)
    f05, auc = number(best.get("f1_05_mean")), number(best.get("auc_mean"))
    if f05 is None or positive is None:
        return ""
    return f"{F1_05.short} {f05:.3f} vs all-positive F1 {positive:.3f}" + (f" · AUC {auc:.3f}" if auc is not None else "")
