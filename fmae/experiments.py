"""The experiment matrix (folds × seeds × λ expanded into resolved configs); the experiment's identity
(`config_key`, which resolved configs are one experiment) is `fmae.run_spec`'s.

No torch here: the app imports this module (through the queue).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fmae.errors import FmaeError
from fmae.run_spec import config_key  # noqa: F401 (the experiment's identity: fmae/run_spec.py)

if TYPE_CHECKING:
    from fmae.config import ProjectConfig, Resolved

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
