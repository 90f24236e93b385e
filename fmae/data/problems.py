"""Problems found in user data, each one line naming the file (and line or field) and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fmae.errors import FmaeError


_WORDS = {"error": "problem", "warning": "warning", "info": "note"}


@dataclass(frozen=True)
class Problem:
    where: str  # "labels.jsonl:17", a file path, or "fold 2"
    message: str
    severity: Literal["error", "warning", "info"] = "error"  # info: worth knowing, nothing to fix

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def report_line(self) -> str:
        return f"{_WORDS[self.severity]}: {self}"


class Problems(list[Problem]):
    """Collects every problem (`fmae data check` reports them all); loaders call `raise_first`."""

    def error(self, where: str, message: str) -> None:
        self.append(Problem(where, message, "error"))

    def warning(self, where: str, message: str) -> None:
        self.append(Problem(where, message, "warning"))

    def info(self, where: str, message: str) -> None:
        self.append(Problem(where, message, "info"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self if p.severity == "error"]

    def raise_first(self) -> None:
        errors = self.errors
        if errors:
            more = f" (and {len(errors) - 1} more problems: run `fmae data check`)" if len(errors) > 1 else ""
            raise FmaeError(f"{errors[0]}{more}")
