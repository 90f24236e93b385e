"""`fmae.toml`: discovery, a typed and validated loader, comment-keeping writes, and config layering.

Precedence is explicit: the paper's recipe < `fmae.toml` < the command line (or the app's choices);
`layer` records where each resolved value came from so a run folder can say so.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import tomlkit
from tomlkit.exceptions import ParseError

from fmae.atomic_write import write_text_atomic
from fmae.errors import FmaeError
from fmae.registry import DATASETS

CONFIG_NAME = "fmae.toml"
ENV_VAR = "FMAE_CONFIG"

# The schema: section -> key -> accepted Python types. `None` as a section key means top level.
_NUM = (int, float)
_SCHEMA: dict[str | None, dict[str, tuple[type, ...]]] = {
    None: {"runs_dir": (str,)},
    "compute": {
        "gpus": (str, list),
        "runs_per_gpu": (int,),
        "min_free_memory_gib": _NUM,
        "cpu_slots": (int,),
        "device": (str,),
    },
    "executor": {"kind": (str,)},
    "executor.slurm": {
        "partition": (str,),
        "account": (str,),
        "time_minutes": (int,),
        "cpus_per_task": (int,),
        "mem_gib": _NUM,
        "cluster": (str,),
        "array_parallelism": (int,),
    },
    "scheduler": {"notify": (list,), "notify_timeout_s": _NUM},
    "defaults": {"model": (str,), "recipe": (str,), "seeds": (list,), "init": (str,)},
    "data": {"max_image_pixels": (int,)},
    "app": {"bell": (bool,)},
}
# Pillow's own Image.MAX_IMAGE_PIXELS (about 9459 × 9459): a larger image is refused as a likely
# decompression bomb unless [data] max_image_pixels raises the limit.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_DATASET_KEYS: dict[str, tuple[type, ...]] = {
    "root": (str,),
    "labels": (str,),
    "train_labels": (str,),
    "test_labels": (str,),
    "synthetic": (dict,),
}
_SYNTH_KEYS: dict[str, tuple[type, ...]] = {
    "subjects": (int,),
    "frames": (int,),
    "size": (int,),
    "seed": (int,),
    "identity_strength": _NUM,
    "nuisance": _NUM,
}
_CHOICES = {
    "compute.device": ("auto", "cpu", "cuda"),
    "executor.kind": ("local", "slurm"),
    "executor.slurm.cluster": ("slurm", "local"),
}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table",
               bool: "true or false"}


@dataclass(frozen=True)
class SynthSettings:
    subjects: int | None = None
    frames: int = 48
    size: int = 112
    seed: int = 0
    identity_strength: float = 1.0
    # Per-frame pose, lighting and noise (fmae/data/synth/faces.py Nuisance): 1 is the benchmarks'
    # difficulty; the demo's copy takes less so a few CPU minutes can learn it.
    nuisance: float = 1.0


@dataclass(frozen=True)
class DatasetLocation:
    name: str
    root: Path | None = None
    labels: Path | None = None
    train_labels: str | None = None  # templates with {fold}
    test_labels: str | None = None
    synthetic: SynthSettings | None = None
    origin: str = ""  # where this entry was written, for error messages ("fmae.toml:42")
    labels_origin: str = ""  # where the label path came from, when not `origin` ("--root (its labels.jsonl)")


@dataclass(frozen=True)
class ProjectConfig:
    path: Path | None  # None = the built-in default (no fmae.toml found)
    base_dir: Path
    runs_dir: Path
    gpus: str | list[int] = "auto"
    runs_per_gpu: int = 1
    min_free_memory_gib: float = 2.0
    cpu_slots: int = 1
    device: str = "auto"
    executor: str = "local"
    slurm: Mapping[str, Any] = field(default_factory=dict)
    notify: tuple[str, ...] = ()  # [scheduler] notify: the command run when a run ends (fmae.notify)
    notify_timeout_s: float = 30.0
    defaults: Mapping[str, Any] = field(default_factory=dict)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    bell: bool = False  # [app] bell: the app rings the terminal bell when it tells that a run ended
    datasets: Mapping[str, DatasetLocation] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "built-in defaults"

    def dataset(self, name: str) -> DatasetLocation:
        return self.datasets.get(name) or DatasetLocation(name=name, origin=self.label)


def default_config_text() -> str:
    return resources.files("fmae").joinpath("default_fmae.toml").read_text(encoding="utf-8")


def find_config(explicit: str | os.PathLike | None = None, cwd: Path | None = None) -> Path | None:
    """`--config`, else $FMAE_CONFIG, else the nearest fmae.toml from cwd upwards, else None."""
    for given, what in ((explicit, "--config"), (os.environ.get(ENV_VAR) or None, ENV_VAR)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise FmaeError(f"{what}: config file {path} does not exist")
            return path.resolve()
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_project(
    config: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    cwd: Path | None = None,
) -> ProjectConfig:
    path = find_config(config, cwd)
    if path is None:
        text, base, name = default_config_text(), (cwd or Path.cwd()).resolve(), "built-in defaults"
    else:
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8-sig")  # a UTF-8 BOM (Windows editors write one) is accepted
        except OSError as e:
            raise FmaeError(f"{path}: cannot read ({e.strerror or e}) — check the file's permissions") from None
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise FmaeError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}) — TOML files are UTF-8: "
                            "save it as UTF-8") from None
        base, name = path.parent, str(path)
    project = parse_project(text, name, base, path)
    if runs_dir is not None:
        project = _replace(project, runs_dir=Path(runs_dir).expanduser().resolve())
    return project


def parse_project(text: str, name: str, base: Path, path: Path | None = None) -> ProjectConfig:
    try:
        doc = tomlkit.parse(text).unwrap()
    except ParseError as e:
        raise FmaeError(f"{name}:{e.line}:{e.col}: TOML syntax error ({_parse_reason(e)}) — fix that line") from None
    lines = _KeyLines(text)

    def where(section: str | None, key: str) -> str:
        line = lines.find(section, key)
        return f"{name}:{line}" if line else name

    def check(section: str | None, table: Mapping[str, Any], schema: Mapping[str, tuple[type, ...]]) -> None:
        for key, value in table.items():
            dotted = f"{section}.{key}" if section else key
            if isinstance(value, dict) and dotted in _SCHEMA:
                continue  # sub-tables are checked on their own
            if key not in schema:
                raise FmaeError(
                    f"{where(section, key)}: unknown key '{dotted}' (expected one of: {', '.join(schema)})"
                )
            _check_type(dotted, value, schema[key], where(section, key))

    check(None, {k: v for k, v in doc.items() if not isinstance(v, dict)}, _SCHEMA[None])
    for key, value in doc.items():
        if isinstance(value, dict) and key not in ("compute", "executor", "scheduler", "defaults", "datasets",
                                                   "overrides", "data", "app"):
            raise FmaeError(
                f"{where(None, key) if lines.find(None, key) else name}: unknown section [{key}] "
                "(expected: compute, executor, scheduler, defaults, datasets, overrides, data, app)"
            )
    for section in ("compute", "executor", "executor.slurm", "scheduler", "defaults", "data", "app"):
        table = _dig(doc, section, name)
        check(section, table, _SCHEMA[section])
        for key, value in table.items():
            choices = _CHOICES.get(f"{section}.{key}")
            if choices and value not in choices:
                raise FmaeError(f"{where(section, key)}: {section}.{key} must be one of {', '.join(choices)}, got '{value}'")
    gpus = _dig(doc, "compute", name).get("gpus", "auto")
    if isinstance(gpus, str) and gpus != "auto" or isinstance(gpus, list) and not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus
    ):
        raise FmaeError(f"{where('compute', 'gpus')}: compute.gpus must be \"auto\" or a list of GPU indices")

    scheduler = _dig(doc, "scheduler", name)
    notify = scheduler.get("notify", [])
    if not all(isinstance(a, str) and a for a in notify) or (notify and not notify[0].strip()):
        raise FmaeError(f"{where('scheduler', 'notify')}: scheduler.notify must be a command as a list of non-empty "
                        'strings, e.g. ["notify-send", "fmae: {event}", "{run}: {message}"] (no shell string)')
    if scheduler.get("notify_timeout_s", 30) <= 0:
        raise FmaeError(f"{where('scheduler', 'notify_timeout_s')}: scheduler.notify_timeout_s must be more than 0")

    max_pixels = _dig(doc, "data", name).get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
    if max_pixels < 1:
        raise FmaeError(f"{where('data', 'max_image_pixels')}: data.max_image_pixels must be at least 1, "
                        f"got {max_pixels}")

    datasets: dict[str, DatasetLocation] = {}
    for ds, entry in _dig(doc, "datasets", name).items():
        section = f"datasets.{ds}"
        if ds not in DATASETS:
            raise FmaeError(f"{where('datasets', ds) if lines.find('datasets', ds) else name}: [{section}] is not a "
                            f"known dataset (known: {', '.join(DATASETS)})")
        if not isinstance(entry, dict):
            raise FmaeError(f"{name}: {section} must be a table")
        check(section, entry, _DATASET_KEYS)
        synth = entry.get("synthetic")
        if synth is not None:
            for key, value in synth.items():
                if key not in _SYNTH_KEYS:
                    raise FmaeError(f"{where(section, 'synthetic')}: unknown key '{section}.synthetic.{key}' "
                                    f"(expected one of: {', '.join(_SYNTH_KEYS)})")
                _check_type(f"{section}.synthetic.{key}", value, _SYNTH_KEYS[key], where(section, "synthetic"))
            if synth.get("nuisance", 0) < 0:
                raise FmaeError(f"{where(section, 'synthetic')}: {section}.synthetic.nuisance must be 0 or more "
                                "(0 = no pose, lighting or noise variation; 1 = the benchmarks' amount)")
        for key in ("train_labels", "test_labels"):
            if key in entry and "{fold}" not in entry[key]:
                raise FmaeError(f"{where(section, key)}: {section}.{key} must contain {{fold}} "
                                "(e.g. \"BP4D_train_fold{fold}.json\")")
        if ("train_labels" in entry) != ("test_labels" in entry):
            raise FmaeError(f"{where(section, 'train_labels' if 'train_labels' in entry else 'test_labels')}: "
                            f"{section} needs both train_labels and test_labels")
        rel = lambda key: _resolve_path(base, entry[key]) if entry.get(key) else None  # noqa: E731
        datasets[ds] = DatasetLocation(
            name=ds,
            root=rel("root"),
            labels=rel("labels"),
            train_labels=str(rel("train_labels")) if entry.get("train_labels") else None,
            test_labels=str(rel("test_labels")) if entry.get("test_labels") else None,
            synthetic=SynthSettings(**synth) if synth is not None else None,
            origin=where(section, "root") if lines.find(section, "root") else f"{name} [{section}]",
        )

    overrides = {}
    for ds, entry in _dig(doc, "overrides", name).items():
        if ds not in DATASETS:
            raise FmaeError(f"{name}: [overrides.{ds}] is not a known dataset (known: {', '.join(DATASETS)})")
        overrides[ds] = dict(entry)

    compute = _dig(doc, "compute", name)
    executor = _dig(doc, "executor", name)
    return ProjectConfig(
        path=path,
        base_dir=base,
        runs_dir=_resolve_path(base, doc.get("runs_dir", "runs")),
        gpus=compute.get("gpus", "auto"),
        runs_per_gpu=compute.get("runs_per_gpu", 1),
        min_free_memory_gib=float(compute.get("min_free_memory_gib", 2.0)),
        cpu_slots=compute.get("cpu_slots", 1),
        device=compute.get("device", "auto"),
        executor=executor.get("kind", "local"),
        slurm=dict(_dig(doc, "executor.slurm", name)),
        notify=tuple(notify),
        notify_timeout_s=float(scheduler.get("notify_timeout_s", 30)),
        defaults=dict(_dig(doc, "defaults", name)),
        max_image_pixels=max_pixels,
        bell=_dig(doc, "app", name).get("bell", False),
        datasets=datasets,
        overrides=overrides,
    )


def update_config(path: Path, changes: Mapping[str, Any]) -> None:
    """Set (or, with value None, remove) dotted keys in fmae.toml, keeping every comment; refuse to
    write a file that would not load."""
    try:
        original = path.read_text(encoding="utf-8")
        bom = "\ufeff" if original.startswith("\ufeff") else ""
        doc = tomlkit.parse(original.removeprefix(bom))
    except ParseError as e:
        raise FmaeError(f"{path}:{e.line}:{e.col}: TOML syntax error ({_parse_reason(e)}) — fix that line") from None
    for dotted_key, value in changes.items():
        *tables, key = dotted_key.split(".")
        node = doc
        for name in tables:
            if name not in node:
                node[name] = tomlkit.table()
            node = node[name]
        if value is None:
            node.pop(key, None)
            continue
        if isinstance(value, dict):
            inline = tomlkit.inline_table()
            inline.update(value)
            value = inline
        node[key] = value
    text = tomlkit.dumps(doc)
    parse_project(text, str(path), path.parent, path)  # validate before anything touches the disk
    write_text_atomic(path, bom + text)  # a BOM the file had stays


# --- layering -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    values: dict[str, Any]
    sources: dict[str, str]  # key -> the layer that set it ("recipe", "fmae.toml", "command line")


def layer(*layers: tuple[str, Mapping[str, Any]]) -> Resolved:
    """Merge (source name, values) layers, lowest first. A later layer may only set keys the first
    layer (the recipe) defines, with a compatible type: a typo must not silently become a new key."""
    base_name, base = layers[0]
    values, sources = dict(base), {k: base_name for k in base}
    for source, overrides in layers[1:]:
        for key, value in overrides.items():
            if key not in base:
                raise FmaeError(f"{source}: unknown setting '{key}' (known: {', '.join(sorted(base))})")
            values[key] = _coerce_like(base[key], value, f"{source}: {key}")
            sources[key] = source
    return Resolved(values, sources)


def parse_set_options(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """`--set key=value` pairs; values are TOML scalars (`3e-4`, `true`, `"text"`) or bare text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FmaeError(f"{flag} {item!r}: expected key=value, e.g. {flag} blr=3e-4")
        try:  # tomllib: plain python values (tomlkit hands back booleans unwrapped, other values wrapped)
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out


# --- helpers --------------------------------------------------------------------------------------

def _replace(project: ProjectConfig, **changes: Any) -> ProjectConfig:
    from dataclasses import replace

    return replace(project, **changes)


def _resolve_path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _dig(doc: Mapping[str, Any], dotted: str, name: str) -> Mapping[str, Any]:
    node: Any = doc
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
        if not isinstance(node, Mapping):
            raise FmaeError(f"{name}: '{dotted}' must be a table ([{dotted}])")
    return node


def _check_type(dotted: str, value: Any, types: tuple[type, ...], where: str) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        wanted = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)
        raise FmaeError(f"{where}: {dotted} must be {wanted}, got {_show(value)}")


def _coerce_like(default: Any, value: Any, where: str) -> Any:
    if default is None or isinstance(value, type(default)) and not (
        isinstance(value, bool) and not isinstance(default, bool)
    ):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    raise FmaeError(f"{where} must be {_TYPE_WORDS.get(type(default), type(default).__name__)}, got {_show(value)}")


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _parse_reason(e: ParseError) -> str:
    return re.sub(r"\s+at line \d+ col \d+$", "", str(e))


class _KeyLines:
    """Finds the line of `key` inside `[section]` in the TOML text, for error messages."""

    _HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")

    def __init__(self, text: str) -> None:
        self.index: dict[tuple[str | None, str], int] = {}
        section: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                section = header.group(1).replace('"', "").replace("'", "")
                parent, _, last = section.rpartition(".")
                self.index.setdefault((parent or None, last), number)
                continue
            key = self._KEY.match(line)
            if key:
                self.index.setdefault((section, key.group(1).strip("\"'")), number)

    def find(self, section: str | None, key: str) -> int | None:
        return self.index.get((section, key))
