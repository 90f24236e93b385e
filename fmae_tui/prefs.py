"""The app's remembered choices (sort column, metric, the last Launch plan, …), kept across visits and restarts.

One small JSON file per user, `$FMAE_TUI_STATE` if set (the tests set it), else
`$XDG_STATE_HOME/fmae/tui.json` (default `~/.local/state/fmae/tui.json`). Each screen owns one section, a
flat mapping of JSON values. Preferences are a convenience: an unreadable or damaged file reads as empty
and the next save replaces it, so a bad file can never stop the app from starting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmae.atomic_write import write_text_atomic


def state_path() -> Path:
    explicit = os.environ.get("FMAE_TUI_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fmae" / "tui.json"


def _read_all(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(section: str) -> dict[str, Any]:
    """The section's saved values ({} when none were saved or the file is unreadable)."""
    value = _read_all(state_path()).get(section)
    return dict(value) if isinstance(value, dict) else {}


def save(section: str, values: dict[str, Any]) -> None:
    """Replace the section's values (other sections are kept). A failed write is ignored: see the docstring."""
    path = state_path()
    data = _read_all(path)
    data[section] = values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass
