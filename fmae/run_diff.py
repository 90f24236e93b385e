"""Config diffs: the resolved config keys whose values differ between run folders, or between groups of
runs as `fmae report` names them ("vit_base fmae_iat λ=2"), each value with the source run.toml recorded
for it (recipe, fmae.toml:12, command line…). `fmae diff`, the Runs, Run and Compare screens show this.

run.toml is read through `RunDir` only and named by the typed sections (`optim.blr`, run_spec.sectioned),
so a flat run.toml of an earlier release and a sectioned one diff key for key. Torch-free: the app
imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fmae.errors import FmaeError
from fmae.run_spec import sectioned
from fmae.runs import RunDir, list_runs

UNSET = "(unset)"  # a key one side's runs do not have
NO_SOURCE = "source not recorded"
# Provenance that says what code trained the run; the command, host and sources are the run's own.
PROVENANCE_KEYS = ("fmae_version", "git_commit", "torch", "timm", "python")


def flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: {"optim": {"blr": 1e-3}} -> {"optim.blr": 1e-3}."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _sources(set_by: Mapping[str, Any]) -> dict[str, str]:
    """Key -> source, under its dotted name and under its own last name too, so a flat set_by finds the
    keys of a sectioned config and the reverse (a dotted name wins)."""
    sources = {k: v for k, v in flat(set_by).items() if isinstance(v, str)}
    own = {k.rsplit(".", 1)[-1]: v for k, v in sources.items()}
    return {**own, **sources}


def run_values(path: Path) -> dict[str, tuple[Any, str]]:
    """One run's dotted keys -> (value, source). FmaeError (one line) for a folder that is not a run."""
    run = RunDir.open(path)
    # Keys named by their section whatever the layout on disk: a flat run.toml of an earlier release
    # and a sectioned one diff key for key.
    config, provenance = sectioned(run.read_config()), run.read_provenance()
    set_by = provenance.get("set_by") if isinstance(provenance.get("set_by"), Mapping) else {}
    sources = _sources(set_by)
    values = {key: (value, sources.get(key) or sources.get(key.rsplit(".", 1)[-1], NO_SOURCE))
              for key, value in flat(config).items()}
    for key in PROVENANCE_KEYS:
        if provenance.get(key) not in (None, ""):
            values[f"provenance.{key}"] = (provenance[key], "provenance")
    return values


def show(value: Any) -> str:
    """A value as a person reads it: 0.0005 not 5e-04 noise, lists space-separated, text as it is."""
    if value is UNSET:
        return UNSET
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _key(value: Any) -> str:
    """Equal values compare equal whatever their type: λ = 2 and 2.0 are one value."""
    if value is UNSET:
        return UNSET
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Value:
    """One value a side holds for a key: where it came from, and in how many of the side's runs."""

    value: Any
    sources: list[str]
    runs: int

    @property
    def text(self) -> str:
        return show(self.value)

    @property
    def source(self) -> str:
        return ", ".join(self.sources)


@dataclass
class Side:
    """A run, or a group of runs, under the name the user gave."""

    name: str
    paths: list[Path]
    values: dict[str, list[Value]] = field(default_factory=dict)  # dotted key -> its distinct values

    def value_keys(self, key: str) -> set[str]:
        return {_key(v.value) for v in self.values.get(key, [Value(UNSET, [], len(self.paths))])}


def _side(name: str, paths: list[Path], per_run: list[dict[str, tuple[Any, str]]]) -> Side:
    side = Side(name, paths)
    for key in sorted({k for values in per_run for k in values}):
        seen: dict[str, Value] = {}
        for values in per_run:
            value, source = values.get(key, (UNSET, ""))
            held = seen.setdefault(_key(value), Value(value, [], 0))
            held.runs += 1
            if source and source not in held.sources:
                held.sources.append(source)
        side.values[key] = list(seen.values())
    return side


def sides_of(named: list[tuple[str, list[Path]]]) -> list[Side]:
    """The sides made of these (name, run folders): per key its distinct values, sources and counts."""
    per_run = [run_values(p) for _, paths in named for p in paths]
    sides, start = [], 0
    for name, paths in named:
        sides.append(_side(name, list(paths), per_run[start:start + len(paths)]))
        start += len(paths)
    return sides


@dataclass
class DiffRow:
    key: str
    cells: list[list[Value]]  # per side, the values it holds (several for a group whose runs differ)


def diff(sides: list[Side]) -> list[DiffRow]:
    """The keys whose values differ between the sides, in key order. Within a group, a key whose runs
    vary the same way on every side (folds, seeds) is no difference."""
    keys = sorted({k for side in sides for k in side.values})
    rows = []
    for key in keys:
        if len({frozenset(side.value_keys(key)) for side in sides}) > 1:
            rows.append(DiffRow(key, [side.values.get(key, [Value(UNSET, [], len(side.paths))]) for side in sides]))
    return rows


# --- naming the sides -------------------------------------------------------------------------------

def group_names(runs_dir: Path, datasets: tuple[str, ...] = (),
                states: tuple[str, ...] = ("done",)) -> dict[tuple[str, str], list[Path]]:
    """Every group of the runs folder, (benchmark, the row's name in `fmae report`) -> its run folders."""
    from fmae.report.scoring import group_fields, group_label

    groups: dict[tuple[str, str], list[Path]] = {}
    for info in list_runs(runs_dir):
        if info.state == "corrupt" or (states and "all" not in states and info.state not in states):
            continue
        if datasets and info.config.get("dataset") not in datasets:
            continue
        if info.config.get("task") not in ("au", "fer"):
            continue  # probes and pretraining are named by other fields in the report
        key = (str(info.config.get("dataset")), group_label(group_fields(info.config, ())))
        groups.setdefault(key, []).append(info.path)
    return groups


def resolve(runs_dir: Path, spec: str, datasets: tuple[str, ...] = (),
            states: tuple[str, ...] = ("done",)) -> tuple[str, list[Path]]:
    """A run folder (a path, or a run id under the runs folder), else a group named as `fmae compare`
    takes it ("vit_base fmae λ=0", or "bp4d vit_base fmae λ=0" where several benchmarks have one).
    FmaeError naming the choices when it is neither, or when the name is on several benchmarks."""
    from fmae.report.compare import normalise_group

    for candidate in (Path(spec).expanduser(), Path(runs_dir) / spec):
        if (candidate / "run.toml").is_file():
            return candidate.name, [candidate]
    groups = group_names(runs_dir, datasets, states)
    wanted = normalise_group(spec)
    hits = [k for k in groups if wanted in (normalise_group(k[1]), normalise_group(f"{k[0]} {k[1]}"))]
    if len(hits) > 1:
        raise FmaeError(f"'{spec}' is a group on {', '.join(sorted(k[0] for k in hits))}: put the benchmark first "
                        f"(e.g. '{hits[0][0]} {hits[0][1]}') or pass --dataset")
    if hits:
        return f"{hits[0][0]} {hits[0][1]}", sorted(groups[hits[0]])
    state_words = ",".join(states)
    known = "; ".join(f"'{d} {n}' ({len(p)} runs)" for (d, n), p in sorted(groups.items())) or "none"
    hint = "" if "all" in states else "; --state all takes unfinished runs too"
    raise FmaeError(f"'{spec}' is neither a run folder nor a run id in {runs_dir}, nor a group of runs in state "
                    f"{state_words} (groups: {known}) — pass two run folders, or two group names as "
                    f"`fmae report` prints them{hint}")


# --- saying it ------------------------------------------------------------------------------------

def cell_text(values: list[Value], group: bool) -> str:
    """What one side holds for a key: "0.0005 (recipe fmae)"; a group says how many runs hold each."""
    parts = []
    for v in values:
        runs = f"{v.runs} runs: " if group else ""
        parts.append(f"{runs}{v.text} ({v.source or NO_SOURCE})")
    return "; ".join(parts)


def diff_lines(sides: list[Side], rows: list[DiffRow]) -> list[str]:
    """The diff as plain lines: a heading naming each side, then per key one line a side."""
    letters = [chr(ord("A") + i) for i in range(len(sides))]
    lines = [f"{letter}: {side.name}" + (f" ({len(side.paths)} runs)" if len(side.paths) != 1 else "")
             for letter, side in zip(letters, sides)]
    if not rows:
        lines.append(f"no differences: the {len(sides)} configs are the same key for key")
        return lines
    lines.append(f"{len(rows)} key(s) differ (value, then the source run.toml recorded for it):")
    for row in rows:
        lines.append(row.key)
        for letter, side, values in zip(letters, sides, row.cells):
            lines.append(f"  {letter}  {cell_text(values, len(side.paths) != 1)}")
    return lines
