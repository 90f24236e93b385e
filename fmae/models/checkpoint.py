"""Reading, filtering, loading and writing checkpoints.

Everything is read with `torch.load(..., weights_only=True)`: a file that would need arbitrary
Python objects (and so could run code) is refused, never loaded. `filter_state_dict` is the one place
that adapts a checkpoint to a model (prefixes, MAE decoder keys, heads, position embeddings);
`load_pretrained` calls it and refuses a checkpoint of another architecture.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from fmae.atomic_write import new_file_mode
from fmae.errors import FmaeError
from fmae.models.encoders import ENCODERS, describe_encoder

_WRAPPERS = ("module", "_orig_mod")  # DDP and torch.compile wrap parameter names in these
_HEADS = ("head", "id_head")
# The original FMAE-IAT code names its identity head `ID_head` (saved in the whole model's state dict).
_RENAMES = {"ID_head": "id_head"}
_SHOWN = 3  # key names quoted in an error message


# --- reading -----------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise FmaeError(f"{path}: is a folder, not a checkpoint file — pass the .pt/.pth file itself")
    if not path.is_file():
        raise FmaeError(f"{path}: no such checkpoint file — check the path")
    try:
        # MAE's training scripts store their argparse.Namespace next to the weights: a plain
        # attribute bag, safe to rebuild, so it is the one class allowed beyond weights.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the refusal says it all
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # "Unsupported global: GLOBAL os.system …": a class or function
            raise FmaeError(f"{path}: refused: the file holds Python objects other than weights "
                            "(weights_only loading, so none of it ran) — if you trust its source, re-save just the weights "
                            "with torch.save(state_dict)") from None
        if _starts_like_a_pickle(path):  # e.g. pickle.dump's protocol 5, which weights_only cannot read
            raise FmaeError(f"{path}: refused: a raw pickle, not a torch.save file (weights_only loading) — "
                            "re-save it with torch.save(state_dict)") from None
        raise _unreadable(path) from None
    except MemoryError:
        raise
    except PermissionError:
        raise FmaeError(f"{path}: cannot read the file (permission denied) — check its permissions") from None
    except Exception:  # truncated zips, garbage bytes and empty files fail in many different ways
        raise _unreadable(path) from None
    if not isinstance(ckpt, dict):
        raise FmaeError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict — "
                        "save the model with torch.save({'model': model.state_dict()})")
    return ckpt


def _starts_like_a_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode that opens every pickle of protocol >= 2


def _unreadable(path: Path) -> FmaeError:
    return FmaeError(f"{path}: not a readable checkpoint (truncated or corrupt) — copy or download it again")


def extract_state_dict(ckpt: dict[str, Any], source: str | os.PathLike = "checkpoint") -> dict[str, Tensor]:
    """The weights in an MAE / fmae checkpoint ({"model": state_dict, ...}) or a bare state dict."""
    entry = _weights_entry(ckpt)
    if entry is not None:
        return dict(ckpt[entry])
    if ckpt and _all_tensors(ckpt):
        return dict(ckpt)
    found = ", ".join(list(map(str, ckpt))[:8]) or "nothing"
    raise FmaeError(f"{source}: holds no model weights (expected a 'model' entry or a bare state dict; "
                    f"found {found}) — pass a checkpoint saved by MAE or fmae")


def _weights_entry(ckpt: dict[str, Any]) -> str | None:
    """The key holding the state dict ("model" in MAE's / FMAE's / fmae's saves), None for a bare one."""
    return next((k for k in ("model", "state_dict") if isinstance(ckpt.get(k), dict) and _all_tensors(ckpt[k])), None)


def _all_tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in d.items())


# --- filtering ---------------------------------------------------------------------------------
def strip_wrappers(key: str) -> str:
    """'module._orig_mod.blocks.0.x' -> 'blocks.0.x' (DDP / torch.compile prefixes, any nesting)."""
    return ".".join(part for part in key.split(".") if part not in _WRAPPERS)


def rename_original(key: str) -> str:
    """The original's module names as fmae's: 'ID_head.weight' -> 'id_head.weight' (after any prefix)."""
    root, dot, rest = key.partition(".")
    if root == "encoder":
        return root + dot + rename_original(rest)
    return _RENAMES.get(root, root) + dot + rest


def encoder_prefix(model_state: dict[str, Any]) -> str:
    """'encoder.' when the encoder sits inside a wrapper model (FineTuneModel, IdentityProbe), else ''."""
    return "encoder." if "encoder.pos_embed" in model_state else ""


def filter_state_dict(state: dict[str, Tensor], model_state: dict[str, Tensor], *, prefix: str | None = None,
                      keep_heads: bool = True) -> tuple[dict[str, Tensor], list[str]]:
    """Adapt checkpoint weights to a model's state dict; returns (filtered, dropped key names).

    - strips `module.` / `_orig_mod.`; maps bare encoder keys to `prefix` keys (and back), and the
      original FMAE-IAT identity head `ID_head.*` to `id_head.*`;
    - drops MAE decoder keys (`decoder_*`, `mask_token`) and a final `norm.*` / `fc_norm.*` the
      model does not have (MAE pretraining vs fine-tuning pooling);
    - drops `head.*` / `id_head.*` that the model lacks or whose shapes differ (all of them when
      keep_heads is False);
    - resamples `pos_embed` (bicubic over the patch grid, cls token kept) to the model's grid.
    Any other key is passed through unchanged: `load_pretrained` reports it as unexpected or
    mismatched rather than dropping it.
    """
    prefix = encoder_prefix(model_state) if prefix is None else prefix
    filtered: dict[str, Tensor] = {}
    dropped: list[str] = []
    for raw_key, value in state.items():
        name = strip_wrappers(raw_key)
        key = _target_key(rename_original(name), model_state, prefix)
        rel = key.removeprefix(prefix)
        root = rel.split(".", 1)[0]
        target = model_state.get(key)
        if root.startswith("decoder") or root == "mask_token":
            dropped.append(name)
        elif target is None and root in ("norm", "fc_norm"):
            dropped.append(name)
        elif key.split(".", 1)[0] in _HEADS:  # heads sit beside the encoder (or on a bare one)
            if keep_heads and target is not None and target.shape == value.shape:
                filtered[key] = value
            else:
                dropped.append(name)
        elif rel == "pos_embed" and target is not None and target.shape != value.shape:
            filtered[key] = resample_pos_embed(value, target.shape)
        else:
            filtered[key] = value
    return filtered, dropped


def _target_key(key: str, model_state: dict[str, Any], prefix: str) -> str:
    if key in model_state or not prefix:
        if not prefix and key.startswith("encoder.") and key not in model_state:
            return key[len("encoder."):]  # an fmae fine-tuned checkpoint into a bare encoder
        return key
    root = key.split(".", 1)[0]
    if root in _HEADS:
        return key  # heads live beside the encoder, never inside it
    return key if key.startswith(prefix) else prefix + key


def resample_pos_embed(pos: Tensor, target_shape: torch.Size) -> Tensor:
    """pos: [1, 1 + h*w, D] -> [1, 1 + H*W, D], bicubic over square patch grids, cls token kept."""
    old, new = pos.shape[1] - 1, target_shape[1] - 1
    old_side, new_side = round(old ** 0.5), round(new ** 0.5)
    if pos.dim() != 3 or pos.shape[-1] != target_shape[-1] or old_side ** 2 != old or new_side ** 2 != new:
        return pos  # not a square grid of the same width: left for load_pretrained to report
    # antialias=False: plain bicubic, as MAE's interpolate_pos_embed (matters only when shrinking)
    return resample_abs_pos_embed(pos, new_size=[new_side, new_side], old_size=[old_side, old_side],
                                  num_prefix_tokens=1, interpolation="bicubic", antialias=False)


# --- loading -----------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load did, said in one line (`str`): the train log's "loaded FILE: …" line."""

    loaded: int
    missing: list[str] = field(default_factory=list)      # model keys left at their init
    unexpected: list[str] = field(default_factory=list)   # always empty after a successful load
    dropped: list[str] = field(default_factory=list)      # checkpoint keys filtered out
    pos_embed: str = ""                                   # "4x4 -> 8x8" when resampled
    renamed: list[str] = field(default_factory=list)      # "ID_head.* -> id_head.*"
    not_read: list[str] = field(default_factory=list)     # entries of the file beside the weights
    notes: list[str] = field(default_factory=list)        # what the caller did after loading

    def __str__(self) -> str:
        parts = [f"{self.loaded} weights loaded"]
        if self.renamed:
            parts.append(f"renamed {', '.join(self.renamed)}")
        if self.pos_embed:
            parts.append(f"pos_embed resampled {self.pos_embed}")
        if self.missing:
            parts.append(f"kept at init: {_summarise(self.missing)}")
        if self.dropped:
            parts.append(f"dropped from the checkpoint: {_summarise(self.dropped)}")
        if self.not_read:
            parts.append(f"not read: {', '.join(self.not_read)}")
        return "; ".join(parts + self.notes)


def _summarise(keys: list[str]) -> str:
    """Key names grouped by module: 'decoder_blocks.0.* (24), mask_token'."""
    def group(k: str) -> str:
        return k.split(".", 1)[0] + (".*" if "." in k else "") if k.startswith("decoder") else \
            re.sub(r"\.(weight|bias)$", ".*", k)

    groups = collections.Counter(map(group, keys))
    alone = {group(k): k for k in keys}  # a group of one is named by its key: 'head.weight', not 'head.*'
    return ", ".join(f"{g} ({n})" if n > 1 else alone[g] for g, n in groups.items())


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a checkpoint's weights into `model`, refusing one whose encoder does not match."""
    ckpt = read_checkpoint(path)
    state = extract_state_dict(ckpt, source=path)
    entry = _weights_entry(ckpt)
    model_state = model.state_dict()
    prefix = encoder_prefix(model_state)
    filtered, dropped = filter_state_dict(state, model_state, prefix=prefix,
                                          keep_heads=getattr(model, "pretrained_heads", True))

    def in_encoder(key: str) -> bool:
        return key.startswith(prefix) and rel(key).split(".", 1)[0] not in _HEADS

    def rel(key: str) -> str:
        return key.removeprefix(prefix)

    missing = [k for k in model_state if k not in filtered]
    unexpected = [k for k in filtered if k not in model_state]
    mismatched = [k for k in filtered if k in model_state and filtered[k].shape != model_state[k].shape]
    bad_missing = [k for k in missing if in_encoder(k) and not rel(k).startswith("fc_norm.")]
    if bad_missing or unexpected or mismatched:
        problems = []
        if bad_missing:
            problems.append(f"{_weights(len(bad_missing), 'encoder weight')} missing ({_names(map(rel, bad_missing))})")
        if unexpected:
            problems.append(f"{_weights(len(unexpected), 'unexpected weight')} ({_names(map(rel, unexpected))})")
        if mismatched:
            shapes = [f"{rel(k)} {list(filtered[k].shape)} vs {list(model_state[k].shape)}" for k in mismatched]
            problems.append(f"{_weights(len(mismatched), 'weight')} of another shape ({_names(shapes)})")
        encoder = model.encoder if prefix else model
        expected = (encoder.patch_embed.patch_size[0], encoder.embed_dim, len(encoder.blocks))
        raise FmaeError(_refusal(path, describe_encoder(encoder), expected, _found_arch(state), "; ".join(problems)))

    result = model.load_state_dict(filtered, strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(missing), result
    old = next((v.shape for k, v in state.items()
                if strip_wrappers(k).removeprefix("encoder.") == "pos_embed"), None)
    new = model_state.get(prefix + "pos_embed")
    resized = ""
    if old is not None and new is not None and old != new.shape:
        resized = f"{_grid(old)} -> {_grid(new.shape)}"
    beside = [str(k) for k in ckpt if k != entry] if entry is not None else []  # optimizer, epoch, scaler, args…
    return LoadReport(loaded=len(filtered), missing=missing, dropped=dropped, pos_embed=resized,
                      renamed=_renamed(state, filtered, model_state, prefix), not_read=beside)


def _renamed(state: dict[str, Tensor], filtered: dict[str, Tensor], model_state: dict[str, Any],
             prefix: str) -> list[str]:
    """'ID_head.* -> id_head.* (2)' for each of the original's module names loaded under fmae's name."""
    counts: collections.Counter = collections.Counter()
    for key in state:
        name = strip_wrappers(key)
        if (new := rename_original(name)) != name and _target_key(new, model_state, prefix) in filtered:
            counts[name.removeprefix("encoder.").split(".", 1)[0]] += 1
    return [f"{root}.* -> {_RENAMES[root]}.*" + (f" ({n})" if n > 1 else "") for root, n in counts.items()]


def _refusal(path: str | os.PathLike, expected: str, sizes: tuple[int, int, int],
             found: tuple[str, tuple[int, int, int]] | None, problems: str) -> str:
    """The one line refusing a checkpoint: the architecture it holds and the one this model is, correctly."""
    if found is None:
        return (f"{path}: not a ViT encoder checkpoint (no patch_embed.proj.weight or cls_token among its weights; "
                f"this model is a {expected}) — {problems} — pass a checkpoint saved by MAE, FMAE(-IAT) or fmae")
    name, found_sizes = found
    if found_sizes != sizes:
        hint = f" (--model {name})" if name in ENCODERS else ""
        return (f"{path}: not a {expected} checkpoint (it holds a {name}) — {problems} — "
                f"pick the --model the checkpoint was trained with{hint}")
    return (f"{path}: holds a {name} encoder, as this model expects, but its weights do not fit — {problems} — "
            "fmae reads the state dicts MAE, FMAE(-IAT) and fmae save; rename or remove these keys and re-save")


def _weights(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _grid(shape: torch.Size) -> str:
    side = round((shape[1] - 1) ** 0.5)
    return f"{side}x{side}"


def _names(keys) -> str:
    keys = list(keys)
    return ", ".join(keys[:_SHOWN]) + (", …" if len(keys) > _SHOWN else "")


def _found_arch(state: dict[str, Tensor]) -> tuple[str, tuple[int, int, int]] | None:
    """The table name of the encoder the checkpoint holds (read from its own shapes) or its sizes when it
    matches no row, with (patch, embed, depth); None when it holds no ViT patch embedding at all."""
    keys = {strip_wrappers(k).removeprefix("encoder."): v for k, v in state.items()}
    proj, cls = keys.get("patch_embed.proj.weight"), keys.get("cls_token")
    depth = len({m.group(1) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))})
    if proj is None or cls is None or proj.dim() != 4:
        return None
    sizes = (proj.shape[-1], cls.shape[-1], depth)
    name = next((s.name for s in ENCODERS.values() if (s.patch, s.embed_dim, s.depth) == sizes), None)
    return name or f"ViT with patch {sizes[0]}, embed {sizes[1]}, depth {depth}", sizes


# --- writing -----------------------------------------------------------------------------------
_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.Size, torch.device)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, set)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save to a temp file in the same folder, fsync, os.replace: readers never see half a file,
    and a process killed while writing leaves the previous checkpoint as it was.

    The payload may hold only tensors, plain numbers/strings and dicts/lists/tuples of them, so
    that `read_checkpoint` (weights_only) can load it back; anything else is a bug, raised here.
    A failed write (disk full, file too large) raises the OSError that caused it, naming `path`,
    not torch's "unexpected pos" RuntimeError.
    """
    _check_payload(payload, "payload")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    # The pid in the name lets a later save recognise (and delete) what a killed writer left behind.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode(path))
            writer = _Writer(f)
            try:
                torch.save(payload, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        if e.filename in (tmp, None):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        _unlink(tmp)
        raise


class _Writer:
    """The file torch.save writes through: keeps the OSError its C++ writer turns into a RuntimeError."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


def _remove_stale_temps(path: Path) -> None:
    """Delete `.NAME.<pid>.*.tmp` files of writers that are gone (kill -9, OOM killer, power cut): each
    may be as large as the checkpoint. A live writer's temp file is left alone."""
    from fmae.runs import pid_alive

    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            _unlink(path.parent / name)


def _unlink(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _check_payload(obj: Any, where: str) -> None:
    if isinstance(obj, Tensor) or type(obj) in _LEAVES:
        return
    if type(obj) not in _CONTAINERS:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a "
                        "weights_only load refuses: store tensors, numbers, strings, dicts and lists only")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_payload(k, f"{where} key {k!r}")
            _check_payload(v, f"{where}[{k!r}]")
    else:
        for i, v in enumerate(obj):
            _check_payload(v, f"{where}[{i}]")
