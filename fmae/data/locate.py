"""Where a dataset lives for one command: fmae.toml's entry, `--root`/`--labels` over it, and the demo
default — synthetic data in the real format, generated on first use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from fmae.config import DatasetLocation, ProjectConfig
from fmae.errors import FmaeError
from fmae.registry import DatasetSpec


def dataset_location(project: ProjectConfig, spec: DatasetSpec, root: Path | None = None,
                     labels: Path | None = None) -> DatasetLocation:
    loc = project.dataset(spec.name)
    if root is not None:
        # Data named on the command line is never generated, and is the origin of any error.
        loc = replace(loc, root=root.expanduser().resolve(), synthetic=None, origin="--root")
    if labels is not None:
        loc = replace(loc, labels=labels.expanduser().resolve(), train_labels=None, test_labels=None)
    return loc


def synthetic_ready(loc: DatasetLocation) -> bool:
    """The generated copy is complete: `synth.json` is written last."""
    return loc.root is not None and (loc.root / "synth.json").is_file()


def ensure_dataset(spec: DatasetSpec, loc: DatasetLocation,
                   say: Callable[[str], None] = lambda msg: None) -> DatasetLocation:
    """Generate the configured synthetic data when it is not there yet; otherwise check the root exists."""
    if loc.synthetic is not None and not synthetic_ready(loc):
        from fmae.data.synth.writer import SynthOptions, synthesize

        assert loc.root is not None, "a synthetic entry always has a root"
        s = loc.synthetic
        say(f"generating synthetic {spec.title} data in {loc.root} (first use; {loc.origin})")
        synthesize(spec, loc.root, SynthOptions(subjects=s.subjects, frames=s.frames, size=s.size,
                                                seed=s.seed, identity_strength=s.identity_strength))
    if loc.root is None:
        raise FmaeError(f"{loc.origin}: datasets.{spec.name} has no root — set it in fmae.toml or pass --root")
    if not loc.root.is_dir():
        raise FmaeError(f"{loc.origin}: datasets.{spec.name}.root: folder {loc.root} does not exist — "
                        "fix the path in fmae.toml or pass --root")
    return loc
