"""GPU discovery and slot planning: the no-GPU path for real (this machine may have no driver), the
planning logic on hand-made GpuInfo lists, and that the module stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from fmae import gpus as G
from fmae.config import ProjectConfig
from fmae.errors import FmaeError


def project(**kw) -> ProjectConfig:
    return ProjectConfig(path=None, base_dir=Path("."), runs_dir=Path("runs"), **kw)


def gpu(index: int, free_gib: float = 70.0, total_gib: float = 80.0, name: str = "NVIDIA A100-SXM4-80GB") -> G.GpuInfo:
    total, free = int(total_gib * 1024), int(free_gib * 1024)
    return G.GpuInfo(index=index, name=name, uuid=f"GPU-{index:08d}", memory_total_mib=total,
                     memory_used_mib=total - free, memory_free_mib=free, utilization_pct=0, temperature_c=40,
                     processes=[])


def snapshot(max_age: float = 0.5) -> dict:
    """probe()'s GPUs as JSON, processes as {"pid", "used_mib"}: what these tests compare."""
    gpus, reason = G.probe(max_age)
    rows = []
    for g in gpus:
        row = asdict(g)
        row["processes"] = [{"pid": pid, "used_mib": used} for pid, used in g.processes]
        rows.append(row)
    return {"gpus": rows, "reason": reason or None}


FOUR = [gpu(i) for i in range(4)]


def nvml_works() -> bool:
    return bool(G.discover(max_age=0))


# --- no GPU (the real NVML of this machine, or a machine without one) ------------------------------

def test_discover_never_raises_and_returns_gpu_infos():
    found, reason = G.probe(max_age=0)
    assert isinstance(found, list) and all(isinstance(g, G.GpuInfo) for g in found)
    assert (reason == "") == bool(found)
    if not found:
        assert reason.startswith("NVML")


def test_no_gpu_gives_cpu_slots_and_a_plan_that_says_so():
    p = project(cpu_slots=3)
    slots = G.plan_slots(p, [])
    assert [s.name for s in slots] == ["cpu0", "cpu1", "cpu2"] and {s.kind for s in slots} == {"cpu"}
    assert all(s.gpus == () for s in slots)
    text = G.plan_text(p, 1, gpus=[])
    assert "no GPU" in text and "3 CPU slots" in text and "3 runs at once" in text
    # A CPU run takes one CPU slot, whatever it asked for; none left → None.
    assert G.assign(slots, 1, [], 2.0) == (slots[0],)
    assert G.assign(slots[2:], 0, [], 2.0) == (slots[2],)
    assert G.assign([], 1, [], 2.0) is None
    assert G.cuda_visible((slots[0],)) == ""


@pytest.mark.skipif(nvml_works(), reason="this machine has a GPU")
def test_the_real_no_gpu_path():
    assert G.discover(max_age=0) == []
    p = project(cpu_slots=2)
    assert [s.name for s in G.plan_slots(p)] == ["cpu0", "cpu1"]
    text = G.plan_text(p, 1)
    assert text.startswith("no GPU (NVML:") and "CPU" in text and "2 runs at once" in text, text
    snap = snapshot(max_age=0)
    assert snap["gpus"] == [] and snap["reason"].startswith("NVML")
    json.dumps(snap)


def test_device_cpu_plans_cpu_slots_even_with_gpus():
    p = project(cpu_slots=2, device="cpu")
    assert [s.kind for s in G.plan_slots(p, FOUR)] == ["cpu", "cpu"]
    assert "compute.device = cpu" in G.plan_text(p, 1, gpus=FOUR)


def test_device_cuda_without_gpu_is_an_error():
    with pytest.raises(FmaeError, match="compute.device = cuda"):
        G.plan_slots(project(device="cuda"), [])


# --- planning with GPUs ----------------------------------------------------------------------------

def test_auto_takes_every_gpu_once():
    slots = G.plan_slots(project(), FOUR)
    assert [s.name for s in slots] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert [s.gpus for s in slots] == [(0,), (1,), (2,), (3,)] and {s.kind for s in slots} == {"gpu"}
    text = G.plan_text(project(), 1, gpus=FOUR)
    assert text == "GPU plan: 4 GPUs (A100-SXM4-80GB ×4), 1 run per GPU, 1 GPU per run → 4 runs at once"


def test_runs_per_gpu_two_names_the_shares():
    p = project(runs_per_gpu=2)
    slots = G.plan_slots(p, FOUR[:2])
    assert [s.name for s in slots] == ["gpu0", "gpu0#2", "gpu1", "gpu1#2"]
    assert all("+" not in s.name for s in slots)  # the scheduler joins names with "+"
    assert "2 runs per GPU" in G.plan_text(p, 1, gpus=FOUR[:2]) and "→ 4 runs at once" in G.plan_text(p, 1, gpus=FOUR[:2])
    # Two runs on one GPU: the second share is used once the first is taken.
    first = G.assign(slots, 1, FOUR[:2], 2.0)
    assert first == (slots[0],)  # ties: the lower index
    rest = [s for s in slots if s not in first]
    second = G.assign(rest, 1, FOUR[:2], 2.0)
    assert second == (slots[2],)  # the less loaded GPU first
    third = G.assign([s for s in rest if s not in second], 1, FOUR[:2], 2.0)
    assert third in ((slots[1],), (slots[3],))


def test_gpu_list_subset():
    p = project(gpus=[1, 3])
    slots = G.plan_slots(p, FOUR)
    assert [s.name for s in slots] == ["gpu1", "gpu3"]
    assert G.cuda_visible(slots) == "1,3"
    assert G.plan_text(p, 1, gpus=FOUR).startswith("GPU plan: 2 GPUs (A100-SXM4-80GB ×2)")


def test_unknown_gpu_index_is_an_error_naming_compute_gpus():
    with pytest.raises(FmaeError, match=r"compute\.gpus") as e:
        G.plan_slots(project(gpus=[0, 5]), FOUR)
    assert "5" in str(e.value) and "0, 1, 2, 3" in str(e.value)
    with pytest.raises(FmaeError, match=r"compute\.gpus"):
        G.plan_slots(project(gpus=[0]), [])  # listed GPUs but none found: not a silent CPU fallback


def test_min_free_memory_refuses_a_full_gpu():
    gs = [gpu(0, free_gib=1.0), gpu(1, free_gib=10.0)]
    slots = G.plan_slots(project(), gs)
    assert G.assign(slots, 1, gs, 2.0) == (slots[1],)
    assert G.assign(slots, 1, gs, 16.0) is None
    assert G.assign(slots[:1], 1, gs, 2.0) is None
    assert G.assign(slots[:1], 1, gs, 0.5) == (slots[0],)
    # A GPU NVML no longer reports is not placed on.
    assert G.assign(slots, 1, gs[:1], 0.5) == (slots[0],)
    assert G.assign(slots[1:], 1, gs[:1], 0.5) is None


def test_two_gpu_run_needs_two_distinct_gpus():
    gs = FOUR[:2]
    p = project(runs_per_gpu=2)
    slots = G.plan_slots(p, gs)
    picked = G.assign(slots, 2, gs, 2.0)
    assert picked is not None and len(picked) == 2 and {s.gpus for s in picked} == {(0,), (1,)}
    assert G.cuda_visible(picked) == "0,1"
    assert G.cuda_env(picked) == {"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    # Two free shares of the same GPU are not two GPUs.
    same_gpu = [s for s in slots if s.gpus == (0,)]
    assert len(same_gpu) == 2 and G.assign(same_gpu, 2, gs, 2.0) is None
    # One of the two GPUs too full → cannot place now.
    assert G.assign(slots, 2, [gs[0], replace(gs[1], memory_free_mib=100)], 2.0) is None
    assert "→ 2 runs at once" in G.plan_text(p, 2, gpus=gs)
    assert "cannot start" in G.plan_text(project(gpus=[0]), 2, gpus=gs)


def test_runs_at_once_counts_distinct_gpu_groups():
    slots = G.plan_slots(project(runs_per_gpu=3), FOUR[:2])
    assert G.runs_at_once(slots, 1) == 6 and G.runs_at_once(slots, 2) == 3 and G.runs_at_once(slots, 3) == 0
    mixed = G.plan_slots(project(runs_per_gpu=1), FOUR[:3])
    assert G.runs_at_once(mixed, 2) == 1


def test_plan_names_mixed_models():
    gs = [gpu(0, name="NVIDIA H100 80GB HBM3"), gpu(1, name="NVIDIA H100 80GB HBM3"), gpu(2, name="NVIDIA A40")]
    assert "(H100 80GB HBM3 ×2, A40 ×1)" in G.plan_text(project(), 1, gpus=gs)


# --- the NVML path, on a stand-in pynvml ------------------------------------------------------------

class FakeNvml:
    """The calls fmae.gpus makes, with the real pynvml's names and return shapes (checked below)."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, devices, fail_init=None):
        self.devices, self.fail_init, self.inits, self.shutdowns = devices, fail_init, 0, 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError(self.fail_init)
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        if self.devices[i] is None:
            raise self.NVMLError("GPU is lost")
        return self.devices[i]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("Mem", (), {"total": h["total"], "used": h["used"], "free": h["total"] - h["used"]})()

    def nvmlDeviceGetUtilizationRates(self, h):
        if h.get("no_util"):
            raise self.NVMLError("Not Supported")
        return type("Util", (), {"gpu": 37, "memory": 5})()

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 51

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [type("P", (), {"pid": pid, "usedGpuMemory": used})() for pid, used in h["procs"]]


def test_fake_nvml_matches_the_real_api():
    import pynvml

    names = [n for n in vars(FakeNvml) if n.startswith("nvml") or n.startswith("NVML_")]
    assert all(hasattr(pynvml, n) for n in names), [n for n in names if not hasattr(pynvml, n)]


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(devices, fail_init=None):
        fake = FakeNvml(devices, fail_init)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(G, "_nvml_ready", False)
        monkeypatch.setattr(G, "_last", None)
        return fake
    yield install


def test_discover_reads_every_gpu(fake_nvml):
    mib = 1024 * 1024
    fake = fake_nvml([
        {"name": "NVIDIA H200", "uuid": "GPU-aaaa", "total": 141 * 1024 * mib, "used": 1024 * mib,
         "procs": [(4242, 512 * mib), (4343, None)]},
        {"name": b"NVIDIA H200", "uuid": b"GPU-bbbb", "total": 141 * 1024 * mib, "used": 0, "procs": [],
         "no_util": True},
    ])
    found = G.discover(max_age=0)
    assert [g.index for g in found] == [0, 1] and [g.name for g in found] == ["NVIDIA H200"] * 2
    a, b = found
    assert (a.uuid, a.memory_total_mib, a.memory_used_mib, a.memory_free_mib) == ("GPU-aaaa", 144384, 1024, 143360)
    assert (a.utilization_pct, a.temperature_c, a.processes) == (37, 51, [(4242, 512), (4343, None)])
    assert (b.uuid, b.utilization_pct, b.processes) == ("GPU-bbbb", None, [])  # unsupported reading → None
    assert G.plan_text(project(), 1) == "GPU plan: 2 GPUs (H200 ×2), 1 run per GPU, 1 GPU per run → 2 runs at once"
    snap = snapshot(max_age=0)
    assert snap["reason"] is None and snap["gpus"][0]["processes"] == [{"pid": 4242, "used_mib": 512},
                                                                        {"pid": 4343, "used_mib": None}]
    json.dumps(snap)
    # NVML stays initialised between queries; a young reading is reused, as a copy.
    G.discover(max_age=0)
    assert fake.inits == 1
    again = G.discover(max_age=60)
    again[0].memory_free_mib = -1
    assert G.discover(max_age=60)[0].memory_free_mib == 143360


def test_a_lost_gpu_is_left_out_and_a_failed_init_is_no_gpu(fake_nvml):
    fake_nvml([None, {"name": "NVIDIA A40", "uuid": "GPU-c", "total": 2**34, "used": 0, "procs": []}])
    assert [g.index for g in G.discover(max_age=0)] == [1]
    fake = fake_nvml([], fail_init="Driver Not Loaded")
    assert G.probe(max_age=0) == ([], "NVML: Driver Not Loaded")
    assert "no GPU (NVML: Driver Not Loaded)" in G.plan_text(project(cpu_slots=2), 1)
    assert fake.inits == 0
    fake.fail_init = None  # the driver is back: the next query finds it
    assert G.probe(max_age=0) == ([], "NVML: no GPU found")
    assert fake.inits == 1


# --- import cost -----------------------------------------------------------------------------------

def test_import_does_not_load_torch_or_nvml():
    code = ("import sys, fmae.gpus; "
            "print(sorted(m for m in ('torch', 'pynvml', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    # Even a query only brings in pynvml.
    code = "import sys, fmae.gpus as g; g.probe(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
