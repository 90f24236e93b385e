"""GPUs as NVML sees them (nvidia-ml-py), and the slots the scheduler places runs on.

No torch here: the app imports this module and must start instantly; `pynvml` itself is imported on
the first query. Every query reads NVML afresh (a reading is reused for at most `max_age` seconds, so a
scheduler placing many queued jobs in one pass does not query every GPU once per job). Without NVML
(no driver, no GPU, a broken install) `discover()` returns [] and the reason is kept for the user.

Slots (one run each):
- with GPUs: `compute.gpus` ("auto" = every GPU NVML reports, or a list of NVML indices), each
  offered `runs_per_gpu` times. Slot names: "gpu0" for the first share of GPU 0, then "gpu0#2",
  "gpu0#3"… for the further shares (no "+": the scheduler joins a run's slot names with "+").
- without GPUs, or with `compute.device = "cpu"`: `cpu_slots` slots "cpu0", "cpu1"…
A plan never mixes the two kinds. On a CPU plan every run takes one CPU slot, whatever number of GPUs
it asked for (the run's own device setting decides where it trains); on a GPU plan a run asking for G
GPUs takes G slots on G distinct GPUs, each with at least `min_free_memory_gib` free.

GPU indices are NVML's, which follow the PCI bus order. CUDA numbers devices fastest-first unless
CUDA_DEVICE_ORDER=PCI_BUS_ID is set, so launch runs with `cuda_env(slots)` (both variables), not with
CUDA_VISIBLE_DEVICES alone, on machines whose GPUs differ.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fmae.errors import FmaeError
from fmae.runs import one_line

MIB = 1024 * 1024


@dataclass
class GpuInfo:
    index: int  # NVML index (PCI bus order)
    name: str
    uuid: str
    memory_total_mib: int
    memory_used_mib: int
    memory_free_mib: int
    utilization_pct: int | None = None  # None where NVML does not support it (e.g. MIG)
    temperature_c: int | None = None
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used MiB or None)

    @property
    def short_name(self) -> str:
        """"NVIDIA A100-SXM4-80GB" → "A100-SXM4-80GB"."""
        name = self.name.strip()
        return name[len("NVIDIA "):] if name.startswith("NVIDIA ") else name


@dataclass(frozen=True)
class Slot:
    name: str  # "gpu0", "gpu0#2", "cpu0"
    kind: str  # "gpu" | "cpu"
    gpus: tuple[int, ...] = ()  # NVML indices; () for a CPU slot


# --- NVML -------------------------------------------------------------------------------------------

_lock = threading.Lock()
_nvml_ready = False  # NVML stays initialised between queries (re-initialising it can be slow)
_last: tuple[float, list[GpuInfo], str] | None = None  # (monotonic time, GPUs, reason) of the last query


def probe(max_age: float = 0.5) -> tuple[list[GpuInfo], str]:
    """(GPUs, reason): the GPUs NVML reports now, and why there are none ("" when there are some).
    Never raises. A reading younger than `max_age` seconds is returned again (as a copy)."""
    global _last
    with _lock:
        now = time.monotonic()
        if _last is None or max_age <= 0 or now - _last[0] > max_age:
            gpus, reason = _query()
            _last = (time.monotonic(), gpus, reason)
        return copy.deepcopy(_last[1]), _last[2]


def discover(max_age: float = 0.5) -> list[GpuInfo]:
    """Every GPU NVML reports, with memory, utilisation, temperature and processes; [] without NVML."""
    return probe(max_age)[0]


def _query() -> tuple[list[GpuInfo], str]:
    global _nvml_ready
    try:
        import pynvml
    except Exception as e:  # nvidia-ml-py missing or broken
        return [], f"NVML: nvidia-ml-py is not importable ({one_line(e, None)})"
    try:
        if not _nvml_ready:
            pynvml.nvmlInit()
            _nvml_ready = True
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, …
        _shutdown(pynvml)
        return [], f"NVML: {one_line(e, None) or type(e).__name__}"
    gpus: list[GpuInfo] = []
    problems: list[str] = []
    for index in range(count):
        try:
            gpus.append(_device(pynvml, index))
        except Exception as e:  # one unreadable GPU (lost, reset needed) is left out, not the others
            problems.append(f"GPU {index}: {one_line(e, None) or type(e).__name__}")
    if not gpus:
        _shutdown(pynvml)  # re-initialise next time: the driver may have changed under us
        return [], "NVML: " + ("; ".join(problems) if problems else "no GPU found")
    return gpus, ""


def _device(pynvml: Any, index: int) -> GpuInfo:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(h)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
        memory_total_mib=int(mem.total // MIB),
        memory_used_mib=int(mem.used // MIB),
        memory_free_mib=int(mem.free // MIB),
        utilization_pct=_optional(lambda: int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)),
        temperature_c=_optional(lambda: int(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))),
        processes=_optional(lambda: [
            (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory // MIB))
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        ]) or [],
    )


def _shutdown(pynvml: Any) -> None:
    global _nvml_ready
    if _nvml_ready:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    _nvml_ready = False


def _optional(read: Any) -> Any:
    try:
        return read()
    except Exception:  # NVMLError_NotSupported and friends: the reading is simply unknown
        return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --- slots ------------------------------------------------------------------------------------------

def plan_slots(project: Any, gpus: list[GpuInfo] | None = None) -> list[Slot]:
    """The slots of this machine under `project` (a ProjectConfig): GPU slots for the configured GPUs
    (`gpus` = the discovered ones; None queries NVML), else `cpu_slots` CPU slots. A GPU index listed in
    compute.gpus that NVML does not report is an FmaeError naming compute.gpus."""
    if gpus is None:
        gpus = discover()
    device = getattr(project, "device", "auto")
    if device == "cpu":
        return _cpu_slots(project)
    chosen = _configured(project, gpus)
    if not chosen:
        if device == "cuda":
            raise FmaeError("compute.device = cuda, but NVML reports no GPU on this machine — set compute.device "
                            "= \"auto\" or \"cpu\" to train on the CPU")
        return _cpu_slots(project)
    per_gpu = int(project.runs_per_gpu)
    if per_gpu < 1:
        raise FmaeError(f"compute.runs_per_gpu = {per_gpu}: must be at least 1")
    return [Slot(f"gpu{g.index}" if k == 0 else f"gpu{g.index}#{k + 1}", "gpu", (g.index,))
            for g in chosen for k in range(per_gpu)]


def _configured(project: Any, gpus: list[GpuInfo]) -> list[GpuInfo]:
    wanted = project.gpus
    if wanted == "auto":
        return sorted(gpus, key=lambda g: g.index)
    by_index = {g.index: g for g in gpus}
    missing = [i for i in wanted if i not in by_index]
    if missing:
        found = ", ".join(str(i) for i in sorted(by_index)) or "none"
        raise FmaeError(f"compute.gpus = {list(wanted)} lists GPU {', '.join(map(str, missing))}, but this machine "
                        f"has GPU(s): {found} — fix compute.gpus in {getattr(project, 'label', 'fmae.toml')} "
                        "(or set it to \"auto\")")
    return [by_index[i] for i in dict.fromkeys(wanted)]


def _cpu_slots(project: Any) -> list[Slot]:
    n = int(project.cpu_slots)
    if n < 1:
        raise FmaeError(f"compute.cpu_slots = {n}: must be at least 1")
    return [Slot(f"cpu{i}", "cpu") for i in range(n)]


def assign(free_slots: list[Slot], gpus_per_run: int, gpus: list[GpuInfo],
           min_free_gib: float) -> tuple[Slot, ...] | None:
    """The slots a run takes now, or None when it cannot be placed yet.

    On a CPU plan (the free slots are CPU slots) the run takes one of them. On a GPU plan it takes
    max(1, gpus_per_run) slots on as many distinct GPUs, each with at least `min_free_gib` GiB free by
    NVML's reading in `gpus`; the least loaded GPUs (most free slots, then most free memory) come first."""
    cpu = [s for s in free_slots if s.kind == "cpu"]
    gpu_slots = [s for s in free_slots if s.kind == "gpu"]
    if not gpu_slots:
        return (cpu[0],) if cpu else None
    want = max(1, int(gpus_per_run))
    info = {g.index: g for g in gpus}
    need_mib = float(min_free_gib) * 1024
    first: dict[int, Slot] = {}  # GPU index -> its first free slot
    free_count: Counter[int] = Counter()
    for s in gpu_slots:
        g = s.gpus[0]
        first.setdefault(g, s)
        free_count[g] += 1
    usable = [g for g in first if g in info and info[g].memory_free_mib >= need_mib]
    if len(usable) < want:
        return None
    usable.sort(key=lambda g: (-free_count[g], -info[g].memory_free_mib, g))
    return tuple(first[g] for g in sorted(usable[:want]))


def cuda_visible(slots: tuple[Slot, ...] | list[Slot]) -> str:
    """CUDA_VISIBLE_DEVICES for a run on these slots: "0,2" (NVML indices); "" on the CPU."""
    indices = dict.fromkeys(g for s in slots if s.kind == "gpu" for g in s.gpus)
    return ",".join(str(g) for g in indices)


def cuda_env(slots: tuple[Slot, ...] | list[Slot]) -> dict[str, str]:
    """The environment a run on these slots needs: CUDA_VISIBLE_DEVICES in NVML's (PCI bus) numbering,
    and CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA numbers the GPUs the same way."""
    return {"CUDA_VISIBLE_DEVICES": cuda_visible(slots), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def runs_at_once(slots: list[Slot], gpus_per_run: int) -> int:
    """How many runs needing `gpus_per_run` GPUs these slots hold at once (memory permitting)."""
    if not slots or slots[0].kind == "cpu":
        return len(slots)
    want = max(1, int(gpus_per_run))
    shares = Counter(s.gpus[0] for s in slots)  # GPU -> its slots
    # Each run takes one share of `want` distinct GPUs; taking from the GPUs with the most shares left
    # first is optimal.
    left, runs = sorted(shares.values(), reverse=True), 0
    while len(left) >= want and left[want - 1] > 0:
        left = sorted([k - 1 for k in left[:want]] + left[want:], reverse=True)
        runs += 1
    return runs


def plan_text(project: Any, gpus_per_run: int, gpus: list[GpuInfo] | None = None) -> str:
    """One line on where queued runs will go, for `fmae queue add` and the Launch screen, e.g.
    "GPU plan: 4 GPUs (A100-SXM4-80GB ×4), 1 run per GPU, 1 GPU per run → 4 runs at once"."""
    reason = ""
    if gpus is None:
        gpus, reason = probe()
    slots = plan_slots(project, gpus)
    n = runs_at_once(slots, gpus_per_run)
    if slots[0].kind == "cpu":
        if getattr(project, "device", "auto") == "cpu":
            why = "CPU plan (compute.device = cpu)"
        else:
            why = f"no GPU ({reason or 'NVML: no GPU found'})"
        return f"{why}: {_count(len(slots), 'CPU slot')} → {_count(n, 'run')} at once"
    indices = list(dict.fromkeys(s.gpus[0] for s in slots))
    names = Counter({g.index: g for g in gpus}[i].short_name for i in indices)
    kinds = ", ".join(f"{name} ×{k}" for name, k in names.items())
    want = max(1, int(gpus_per_run))
    head = (f"GPU plan: {_count(len(indices), 'GPU')} ({kinds}), {_count(int(project.runs_per_gpu), 'run')} per GPU, "
            f"{_count(want, 'GPU')} per run")
    if n == 0:
        return f"{head} → cannot start: each run needs {want} GPUs and compute.gpus gives {len(indices)}"
    return f"{head} → {_count(n, 'run')} at once"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- the CPU, for the app's GPU screen on a machine without a GPU ------------------------------------------

@dataclass
class CpuInfo:
    cores: int
    percent: float  # all cores, since the previous reading (0–100)
    load: tuple[float, float, float]  # 1, 5 and 15 minute load averages
    memory_used_mib: int
    memory_total_mib: int


@dataclass
class ProcessUsage:
    pid: int
    percent: float  # CPU % of one core since the previous reading, the process and its children together
    rss_mib: float  # resident memory, the process and its children together
    processes: int  # the process and its living children (loader workers, DDP ranks)


_procs: dict[int, tuple[Any, float]] = {}  # pid -> (psutil.Process, create time): CPU % needs the last reading


def cpu() -> CpuInfo:
    """This machine's CPU load and memory (psutil). The first reading's percent covers no interval: 0."""
    import os

    import psutil

    mem = psutil.virtual_memory()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return CpuInfo(psutil.cpu_count() or 1, float(psutil.cpu_percent(interval=None)),
                   (float(load[0]), float(load[1]), float(load[2])),
                   int((mem.total - mem.available) / MIB), int(mem.total / MIB))


def process_usage(pid: int) -> ProcessUsage | None:
    """CPU % and resident memory of a run's process tree, or None when the process is gone. CPU % is over
    the time since the previous call for the same pid (0 on the first)."""
    import psutil

    try:
        root = psutil.Process(int(pid))
        tree = [root] + root.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        _procs.pop(int(pid), None)
        return None
    percent, rss, alive = 0.0, 0.0, 0
    for proc in tree:
        try:
            known = _procs.get(proc.pid)
            if known is None or known[1] != proc.create_time():
                _procs[proc.pid] = known = (proc, proc.create_time())
                known[0].cpu_percent(interval=None)  # the first reading only starts the interval
            percent += known[0].cpu_percent(interval=None)
            rss += known[0].memory_info().rss / MIB
            alive += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            _procs.pop(proc.pid, None)
            continue
    return ProcessUsage(int(pid), percent, rss, alive) if alive else None
