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
from typing import Any, Iterable, Mapping, NamedTuple

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


def runs_text(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


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


class Named(NamedTuple):
    """What a name the user gave stands for: a run, or a group's runs as `fmae report` counts them (the
    newest of each cell), with the ids of the older runs of its cells, which the group leaves out."""

    name: str
    paths: list[Path]
    older: tuple[str, ...] = ()
    group: bool = False  # named as a group (of one run, perhaps), not as a run folder


@dataclass
class Side:
    """A run, or a group of runs, under the name the user gave."""

    name: str
    paths: list[Path]
    values: dict[str, list[Value]] = field(default_factory=dict)  # dotted key -> its distinct values
    older: tuple[str, ...] = ()  # a group's runs replaced by a newer run of their cell: not in `paths`
    group: bool = False

    def value_keys(self, key: str) -> set[str]:
        return {_key(v.value) for v in self.values.get(key, [Value(UNSET, [], len(self.paths))])}


def _side(named: Named, per_run: list[dict[str, tuple[Any, str]]]) -> Side:
    side = Side(named.name, list(named.paths), older=tuple(named.older), group=named.group)
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


def sides_of(named: Iterable[tuple[str, list[Path]] | Named]) -> list[Side]:
    """The sides made of these (name, run folders[, older ids]): per key its distinct values, sources and
    counts."""
    sides = []
    for item in named:
        item = Named(*item)
        sides.append(_side(item, [run_values(p) for p in item.paths]))
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
                states: tuple[str, ...] = ("done",)) -> dict[tuple[str, str], Named]:
    """Every group of the runs folder, (benchmark, the row's name in `fmae report`) -> its runs, chosen
    as the report chooses them (fmae.report.collect.select: no `fmae eval` re-evaluations, no pretraining)
    and counted as it counts them: the newest run of each (fold, seed) cell; an identity probe, every run."""
    from fmae.report.collect import Selection, select
    from fmae.report.scoring import group_label

    refs, _, _ = select(list_runs(runs_dir), Selection(datasets=datasets))
    cells: dict[tuple[str, str], dict[tuple, Any]] = {}
    older: dict[tuple[str, str], list[str]] = {}
    for ref in sorted(refs, key=lambda r: r.id):  # ids sort by time: a cell's last is its newest
        if states and "all" not in states and ref.state not in states:
            continue
        key = (ref.dataset, group_label(ref.key[2]))
        cell = (ref.fold, ref.seed) if ref.task != "id_probe" else (ref.id, ref.seed)
        held = cells.setdefault(key, {})
        if cell in held:
            older.setdefault(key, []).append(held[cell].id)
        held[cell] = ref
    return {key: Named(f"{key[0]} {key[1]}", sorted(r.info.path for r in held.values()), tuple(older.get(key, ())),
                       group=True) for key, held in cells.items()}


def resolve(runs_dir: Path, spec: str, datasets: tuple[str, ...] = (),
            states: tuple[str, ...] = ("done",)) -> Named:
    """A run folder (a path, or a run id under the runs folder), else a group named as `fmae compare`
    takes it ("vit_base fmae λ=0", or "bp4d vit_base fmae λ=0" where several benchmarks have one).
    FmaeError naming the choices when it is neither, or when the name is on several benchmarks."""
    from fmae.report.compare import normalise_group

    for candidate in (Path(spec).expanduser(), Path(runs_dir) / spec):
        if (candidate / "run.toml").is_file():
            return Named(candidate.name, [candidate])
    groups = group_names(runs_dir, datasets, states)
    wanted = normalise_group(spec)
    hits = [k for k in groups if wanted in (normalise_group(k[1]), normalise_group(f"{k[0]} {k[1]}"))]
    if len(hits) > 1:
        raise FmaeError(f"'{spec}' is a group on {', '.join(sorted(k[0] for k in hits))}: put the benchmark first "
                        f"(e.g. '{hits[0][0]} {hits[0][1]}') or pass --dataset")
    if hits:
        return groups[hits[0]]
    state_words = ",".join(states)
    known = "; ".join(f"'{d} {n}' ({runs_text(len(g.paths))})" for (d, n), g in sorted(groups.items())) or "none"
    hint = "" if "all" in states else "; --state all takes unfinished runs too"
    raise FmaeError(f"'{spec}' is neither a run folder nor a run id in {runs_dir}, nor a group of runs in state "
                    f"{state_words} (groups: {known}) — pass two run folders, or two group names as "
                    f"`fmae report` prints them{hint}")


# --- saying it ------------------------------------------------------------------------------------

def cell_text(values: list[Value], group: bool) -> str:
    """What one side holds for a key: "0.0005 (recipe fmae)"; a group says how many runs hold each."""
    parts = []
    for v in values:
        runs = f"{runs_text(v.runs)}: " if group else ""
        parts.append(f"{runs}{v.text} ({v.source or NO_SOURCE})")
    return "; ".join(parts)


def diff_lines(sides: list[Side], rows: list[DiffRow]) -> list[str]:
    """The diff as plain lines: a heading naming each side, then per key one line a side."""
    letters = [chr(ord("A") + i) for i in range(len(sides))]
    lines = [f"{letter}: {side.name}{group_count(side)}" for letter, side in zip(letters, sides)]
    if not rows:
        lines.append(f"no differences: the {len(sides)} configs are the same key for key")
        return lines
    lines.append(f"{len(rows)} key(s) differ (value, then the source run.toml recorded for it):")
    for row in rows:
        lines.append(row.key)
        for letter, side, values in zip(letters, sides, row.cells):
            lines.append(f"  {letter}  {cell_text(values, is_group(side))}")
    return lines


def is_group(side: Side) -> bool:
    """A side named as a group (by `resolve`), or made of several runs."""
    return side.group or len(side.paths) != 1


def group_count(side: Side) -> str:
    """" (3 runs)" for a group, with the older runs of its cells that it leaves out, as `fmae report`
    counts a row; "" for one run named by its folder."""
    if not is_group(side):
        return ""
    if not side.older:
        return f" ({runs_text(len(side.paths))})"
    return (f" ({runs_text(len(side.paths))}, each cell's newest as `fmae report` counts them; left out, "
            f"replaced by a newer run of its cell: {', '.join(side.older)})")
