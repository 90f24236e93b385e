"""Writes the checkpoint cases of the bad-input corpus (run from the repository root to regenerate them):

    .venv/bin/python tests/bad_inputs/checkpoints/make_checkpoints.py

The files are kept small: every tensor is one stored number expanded to its shape (torch.save keeps the
view), which is all the loader's checks look at. The code-running pickles call `builtins.open` to create
an empty file named `fmae-bad-input-ran-code` in the current folder — harmless, and easy to detect.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MARKER = "fmae-bad-input-ran-code"


class RunsCode:
    """Unpickling this calls builtins.open(MARKER, "w"): what a hostile checkpoint would do (worse)."""

    def __reduce__(self):
        return builtins.open, (MARKER, "w")


def tiny_state(model: str) -> dict[str, torch.Tensor]:
    from fmae.models.encoders import create_encoder

    encoder = create_encoder(model, img_size=32)
    return {k: torch.zeros(1).expand(v.shape) for k, v in encoder.state_dict().items()}


def main() -> None:
    torch.save({"model": tiny_state("vit_small"), "epoch": 800}, HERE / "other_architecture.pth")

    torch.save({"model": tiny_state("vit_tiny")}, HERE / "whole.tmp")
    data = (HERE / "whole.tmp").read_bytes()
    (HERE / "whole.tmp").unlink()
    (HERE / "truncated.pt").write_bytes(data[: len(data) // 2])

    torch.save({"model": {"cls_token": torch.zeros(1, 1, 96)}, "args": RunsCode()}, HERE / "runs_code.pth")
    with open(HERE / "raw_pickle.pkl", "wb") as f:
        pickle.dump({"model": {"cls_token": torch.zeros(1, 1, 96)}, "args": RunsCode()}, f, protocol=5)
    torch.save({"optimizer": {"lr": 0.001}, "epoch": 3}, HERE / "no_weights.pt")
    # the right encoder, plus a module fmae has no place for: refused without claiming another architecture
    foreign = {**tiny_state("vit_tiny"), "aux_head.weight": torch.zeros(1).expand(3, 96)}
    torch.save({"model": foreign, "epoch": 5}, HERE / "right_size_foreign_weights.pth")
    (HERE / "empty.pt").write_bytes(b"")


if __name__ == "__main__":
    main()
