"""What one look at a run folder found new: metric records, log lines and files that changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunUpdate:
    records: list[dict[str, Any]] = field(default_factory=list)  # new complete lines of metrics.jsonl
    metrics_reset: bool = False  # metrics.jsonl was replaced: drop what was kept, `records` is all of it
    log_lines: list[str] = field(default_factory=list)
    log_reset: bool = False
    files: dict[str, Any] = field(default_factory=dict)  # name -> new content (None: the file is gone)
    errors: dict[str, str] = field(default_factory=dict)  # name -> why it could not be read

    def __bool__(self) -> bool:
        return bool(self.records or self.metrics_reset or self.log_lines or self.log_reset or self.files
                    or self.errors)
