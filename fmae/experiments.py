"""The experiment's identity (which resolved configs are one experiment) and the experiment matrix
(folds × seeds × λ expanded into resolved configs). The queue stores the identity with each job.

No torch here: the app imports this module (through the queue).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from fmae.errors import FmaeError

if TYPE_CHECKING:
    from fmae.config import ProjectConfig, Resolved

# Keys that say how a run executes, not what it computes: two configs differing only here are the same
# experiment (a run made on a GPU box and one made on a laptop are one cell).
EXECUTION_KEYS = frozenset({"device", "amp", "num_workers", "log_every", "compile", "save_best", "data_root",
                            "labels", "train_labels", "test_labels", "data_cache", "fused_attn", "fused_optimizer",
                            "fast_augment", "max_image_pixels"})

# --- the experiment's identity --------------------------------------------------------------------

def _canonical(value: Any) -> Any:
    # What run.toml gives back for what was written: no None (TOML has no null), tuples as lists, paths
    # as text; an integral float equals its int (λ = 2 and λ = 2.0 are one experiment).
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


# Keys that join the experiment key only away from this value, which every run made before the key existed
# ran with: a new linear-head run is the same experiment as an older run without the key.
QUIET_DEFAULTS: Mapping[str, Any] = {"id_head_depth": 1}


def config_key(cfg: Mapping) -> str:
    """sha1 of the canonical JSON of a resolved config without its execution-only keys: two runs are the
    same experiment when their keys are equal."""
    body = {k: v for k, v in cfg.items() if k not in EXECUTION_KEYS and v is not None
            and not (k in QUIET_DEFAULTS and _canonical(v) == QUIET_DEFAULTS[k])}
    text = json.dumps(_canonical(body), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()



# --- the experiment matrix ------------------------------------------------------------------------

def expand_matrix(project: ProjectConfig, dataset: str, *, folds: Iterable[int] | None, seeds: Iterable[int] | None,
                  lambdas: Iterable[float] | None, recipe: str | None, cli: dict, root: Path | None = None,
                  labels: Path | None = None, generate: bool = True) -> list[Resolved]:
    """One resolved config per cell of folds × seeds × λ, in the order seed, λ, fold (so the first runs
    done cover every fold of one seed). FER benchmarks have no folds and no λ: one cell per seed.
    Missing folds mean every fold; missing seeds the project's default seeds; missing λ the recipe's.
    With `generate`, configured synthetic data is made on first use (as `fmae train` does)."""
    from fmae.registry import get_dataset
    from fmae.run_config import resolve_run_config

    spec = get_dataset(dataset)
    seeds_ = _unique(seeds) if seeds is not None else _unique(project.defaults.get("seeds") or [0])
    if spec.task == "au":
        folds_ = _unique(folds) if folds is not None else list(range(1, spec.num_folds + 1))
        lambdas_: list[float | None] = _unique(float(x) for x in lambdas) if lambdas is not None else [None]
    else:
        folds_, lambdas_ = [None], [None]
    if not seeds_ or not folds_ or not lambdas_:
        raise FmaeError("the matrix is empty: give at least one fold, seed and λ")
    if lambdas is not None and spec.task == "au" and "lambda_id" in cli:
        raise FmaeError("--lambdas and --set lambda_id=… both given: use one")
    cells = []
    first = True
    for seed in seeds_:
        for lam in lambdas_:
            for fold in folds_:
                layer = dict(cli)
                if lam is not None:
                    layer["lambda_id"] = lam
                cells.append(resolve_run_config(project, spec.name, recipe=recipe, fold=fold, seed=int(seed),
                                                cli=layer, root=root, labels=labels, generate=generate and first))
                first = False
    return cells


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))
