"""How fast `fmae synth` writes images: the issue's target is 5,000 images of 112 px in well under a
minute on this project's 2-core machine. Usage: python bench/synth_speed.py [--images N] [--size PX]"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from fmae.data.synth.writer import SynthOptions, synthesize
from fmae.registry import DATASETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    spec = DATASETS["bp4d"]
    frames = -(-args.images // len(spec.subjects))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = synthesize(spec, Path(tmp), SynthOptions(frames=frames, size=args.size))
        seconds = time.perf_counter() - start
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"synth bp4d: {report.images} images of {args.size} px in {seconds:.1f} s "
          f"= {report.images / seconds:.0f} images/s (target: 5,000 in under 60 s)")


if __name__ == "__main__":
    main()
