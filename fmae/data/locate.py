"""Where a dataset lives for one command: fmae.toml's entry, `--root`/`--labels` over it, and the demo
default — synthetic data in the real format, generated on first use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from fmae.config import DatasetLocation, ProjectConfig
from fmae.data.synth import GENERATOR_VERSION
from fmae.errors import FmaeError
from fmae.registry import DatasetSpec

LABELS_NAME = "labels.jsonl"  # what `fmae synth --out DIR` names the copy's labels


def dataset_location(project: ProjectConfig, spec: DatasetSpec, root: Path | None = None,
                     labels: Path | None = None) -> DatasetLocation:
    """fmae.toml's entry, with `--root`/`--labels` over it. `--root DIR` without `--labels` takes
    DIR/labels.jsonl when there is one (what `fmae synth --out DIR` writes); otherwise it keeps the
    configured label files of a real copy — never a synthetic entry's, which describe that copy only."""
    loc = project.dataset(spec.name)
    if root is not None:
        configured = loc
        root = root.expanduser().resolve()
        # Data named on the command line is never generated, and is the origin of any error.
        loc = replace(loc, root=root, synthetic=None, origin="--root")
        own = root / LABELS_NAME
        if labels is None and spec.task == "au":
            if own.is_file():
                loc = replace(loc, labels=own, train_labels=None, test_labels=None,
                              labels_origin=f"--root ({LABELS_NAME} found there)")
            elif configured.synthetic is not None:
                loc = replace(loc, labels=None, train_labels=None, test_labels=None)
            else:
                loc = replace(loc, labels_origin=configured.origin)
    if labels is not None:
        loc = replace(loc, labels=labels.expanduser().resolve(), train_labels=None, test_labels=None,
                      labels_origin="--labels")
    return loc


def missing_labels(spec: DatasetSpec, loc: DatasetLocation) -> FmaeError:
    """What to pass when an AU dataset has no label file."""
    if loc.origin == "--root":
        return FmaeError(f"--root {loc.root}: no {LABELS_NAME} there — pass --labels FILE, this copy's JSON-lines "
                         f"{spec.title} AU labels")
    return FmaeError(f"{loc.origin}: datasets.{spec.name} has no label file — set `labels` (or `train_labels` and "
                     "`test_labels`) in fmae.toml, or pass --labels")


def synth_generator(root: Path) -> int | None:
    """The generator version a synthetic copy's `synth.json` records (1 before versions were recorded);
    None when the folder holds no complete synthetic copy."""
    try:
        meta = json.loads((root / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    generator = meta.get("generator")
    return int(generator.get("version", 1)) if isinstance(generator, dict) else 1


# The fmae.toml settings a copy's synth.json records under "options"; a copy whose record differs is made again.
_SETTINGS = ("subjects", "frames", "size", "seed", "identity_strength", "nuisance")


def synthetic_changes(loc: DatasetLocation) -> list[str]:
    """The `synthetic` settings the copy on disk was not made with ("nuisance 1 -> 0.3"); empty when it
    matches, has no synth.json, or is not a configured synthetic copy."""
    if loc.synthetic is None or loc.root is None:
        return []
    try:
        meta = json.loads((loc.root / "synth.json").read_text(encoding="utf-8"))
        options = meta.get("options")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(options, dict):
        return []
    # Copies written before a setting existed hold its default (nuisance was always 1 until recorded).
    made = {"nuisance": 1.0, **options}
    wanted = {k: getattr(loc.synthetic, k) for k in _SETTINGS}
    changes = [f"{k} {_num(made.get(k))} -> {_num(v)}" for k, v in wanted.items()
               if made.get(k) != v and k != "subjects"]
    # `--register` records the count of a copy made with every subject (options say None): either matches.
    if wanted["subjects"] not in (made.get("subjects"), meta.get("subjects")):
        changes.insert(0, f"subjects {meta.get('subjects')} -> {wanted['subjects']}")
    return changes


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def synthetic_ready(loc: DatasetLocation) -> bool:
    """The generated copy is complete (`synth.json` is written last), made by this generator and with the
    configured settings."""
    return (loc.root is not None and synth_generator(loc.root) == GENERATOR_VERSION
            and not synthetic_changes(loc))


def ensure_dataset(spec: DatasetSpec, loc: DatasetLocation,
                   say: Callable[[str], None] = lambda msg: None) -> DatasetLocation:
    """Generate the configured synthetic data when it is not there yet (or was made by an older
    generator); otherwise check the root exists and is not such an older synthetic copy."""
    if loc.synthetic is not None and not synthetic_ready(loc):
        assert loc.root is not None, "a synthetic entry always has a root"
        old = synth_generator(loc.root)
        if old is None:
            say(f"generating synthetic {spec.title} data in {loc.root} (first use; {loc.origin})")
            _synthesize(spec, loc, loc.root)
        elif old != GENERATOR_VERSION:
            say(f"making synthetic {spec.title} data in {loc.root} again: it was written by generator {old}, "
                f"this fmae writes version {GENERATOR_VERSION} ({loc.origin})")
            _regenerate(spec, loc)
        else:
            say(f"making synthetic {spec.title} data in {loc.root} again: its settings changed "
                f"({', '.join(synthetic_changes(loc))}; {loc.origin})")
            _regenerate(spec, loc)
    if loc.root is None:
        raise FmaeError(f"{loc.origin}: datasets.{spec.name} has no root — set it in fmae.toml or pass --root")
    if not loc.root.is_dir():
        raise FmaeError(f"{loc.origin}: datasets.{spec.name}.root: folder {loc.root} does not exist — "
                        "fix the path in fmae.toml or pass --root")
    old = synth_generator(loc.root)
    if loc.synthetic is None and old is not None and old < GENERATOR_VERSION:
        raise FmaeError(f"{loc.root}: a synthetic copy written by an older fmae synth (generator {old}, now "
                        f"{GENERATOR_VERSION}; see fmae/data/synth/__init__.py) — write a new one: "
                        f"{_synth_command(spec, loc.root)}")
    return loc


def _synthesize(spec: DatasetSpec, loc: DatasetLocation, out: Path) -> None:
    from fmae.data.synth.writer import SynthOptions, synthesize

    s = loc.synthetic
    assert s is not None
    synthesize(spec, out, SynthOptions(subjects=s.subjects, frames=s.frames, size=s.size, seed=s.seed,
                                       identity_strength=s.identity_strength, nuisance=s.nuisance))


def _regenerate(spec: DatasetSpec, loc: DatasetLocation) -> None:
    """Write the copy into a fresh sibling folder, then swap it in: files of the old layout must not
    linger beside the new ones, and an interrupted run leaves the old copy whole."""
    import os
    import shutil

    root = loc.root
    assert root is not None
    fresh = root.with_name(f".{root.name}.new-{os.getpid()}")
    stale = root.with_name(f".{root.name}.old-{os.getpid()}")
    shutil.rmtree(fresh, ignore_errors=True)
    _synthesize(spec, loc, fresh)
    if synthetic_ready(loc):  # another process swapped its copy in meanwhile
        shutil.rmtree(fresh, ignore_errors=True)
        return
    os.replace(root, stale)
    os.replace(fresh, root)
    shutil.rmtree(stale, ignore_errors=True)


def _synth_command(spec: DatasetSpec, root: Path) -> str:
    try:
        options = json.loads((root / "synth.json").read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError, AttributeError):
        options = {}
    if not isinstance(options, dict):
        options = {}
    # The generator's defaults (identity strength and nuisance 1) go unsaid, as a user would type it.
    flags = "".join(f" --{k.replace('_', '-')} {_num(options[k])}" for k in _SETTINGS
                    if options.get(k) is not None and not (k in ("identity_strength", "nuisance") and options[k] == 1))
    return f"fmae synth {spec.name} --out {root.with_name(root.name + '-new')}{flags}"
