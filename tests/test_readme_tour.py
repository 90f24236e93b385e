"""README.md's tour, run as a newcomer runs it, in a fresh clone of this repository: the commands that are
quick and need no licensed data run verbatim; afterwards the suite's config tests pass in that clone, and
the only tracked file that changed is the one the README says the tour edits (fmae.toml), by exactly
the commands it marks."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# Tour commands run here (verbatim); the others need real data, train for minutes or open the app.
# The demo's `fmae train` is tests/test_demo.py's; queue, scheduler and app have their own tests.
QUICK = ("fmae --help", "fmae datasets", "fmae synth ", "fmae config recipe ", "fmae config set ",
         "fmae train bp4d --fold 2 --dry-run", "fmae report ")
EDITS = "edits fmae.toml"


def tour_lines(readme: str) -> list[tuple[str, str]]:
    """(command, comment) for each line of the README's tour block."""
    block = readme.split("## A short tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.strip().splitlines():
        command, _, comment = raw.partition("#")
        lines.append((command.strip(), comment.strip()))
    return lines


def git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_the_readme_tour_leaves_the_checkout_as_the_readme_says(tmp_path):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "fmae"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    env.update(PYTHONPATH=str(clone), COLUMNS="80", NO_COLOR="1")  # the clone's code, at 80 columns

    lines = tour_lines((clone / "README.md").read_text())
    ran, edited = [], []
    for command, comment in lines:
        if not command.startswith(QUICK):
            continue
        before = (clone / "fmae.toml").read_bytes()
        argv = shlex.split(command)
        assert argv[0] == "fmae"
        result = subprocess.run([sys.executable, "-m", "fmae", *argv[1:]], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=300)
        # `fmae report` with no runs yet says so in one line (exit 2); everything else succeeds
        assert result.returncode == (2 if argv[1] == "report" else 0), (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, command
        ran.append(command)
        if (clone / "fmae.toml").read_bytes() != before:
            edited.append(command)
        assert (EDITS in comment) == (command in edited), f"the README says {comment!r} of `{command}`"
    assert len(ran) >= 7 and any(c.startswith("fmae synth") for c in edited)

    # --register wrote paths relative to fmae.toml's folder: the project can move
    toml = (clone / "fmae.toml").read_text()
    assert 'root = "data/disfa"' in toml and 'labels = "data/disfa/labels.jsonl"' in toml
    assert str(clone) not in toml

    # the suite's config tests pass in the edited clone (a user's configuration never fails them)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                            "tests/test_config.py"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]

    # tracked files: only fmae.toml changed; nothing untracked outside what git ignores (runs/, data/)
    changed = git(clone, "status", "--porcelain").splitlines()
    assert changed == [" M fmae.toml"], changed
