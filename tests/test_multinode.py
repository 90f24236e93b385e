"""Several hosts training one run: two "nodes" on this machine, one process each, meeting over
127.0.0.1 with gloo (`fmae exec RUN --nnodes 2 --node-rank K --master HOST:PORT`, torchrun on each),
against one process with the global batch; and the rendezvous a Slurm job's environment gives each
task of a multi-node job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_fmae
from fmae.config import ProjectConfig

TIMING = {"t", "seconds", "images_per_s"}
# The existing DDP test's run (tests/test_train.py), one epoch: IAT on, no drop-path (not rank-invariant).
CLI = {"model": "vit_tiny", "input_size": 32, "num_workers": 0, "log_every": 1, "warmup_epochs": 0, "epochs": 1,
       "lambda_id": 0.5, "drop_path": 0.0, "blr": 0.05}


def make_run(runs: Path, root: Path, batch_size: int) -> Path:
    from fmae.run_config import create_run, resolve_run_config

    p = ProjectConfig(path=None, base_dir=runs.parent, runs_dir=runs)
    resolved = resolve_run_config(p, "bp4d", fold=1, cli={**CLI, "batch_size": batch_size}, root=root,
                                  labels=root / "labels.jsonl")
    return create_run(runs, resolved).path


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_of_one_process_give_the_metrics_of_one_process_with_the_global_batch(make_synth, tmp_path):
    root = make_synth("bp4d")
    one, two = make_run(tmp_path / "one", root, 16), make_run(tmp_path / "two", root, 8)
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"} | {"OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "fmae", "exec", str(two), "--nnodes", "2", "--node-rank", str(k),
                               "--master", master], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    reference = run_fmae("exec", one)
    outputs = [p.communicate(timeout=400) for p in nodes]
    assert reference.returncode == 0, reference.stderr
    assert [p.returncode for p in nodes] == [0, 0], outputs
    assert "(node 0 of 2)" in outputs[0][0] and "(node 1 of 2)" in outputs[1][0]
    a, b = records(one), records(two)
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_au", "loss_id", "lr", "auc_mean", "f1_best_mean"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["split"], ra["step"], key)
    assert np.load(two / "predictions" / "best.npz")["probs"].shape == (16, 12)  # gathered from both nodes
    status = json.loads((two / "status.json").read_text())
    assert status["state"] == "done" and status["total_steps"] == 2  # 32 frames / (8 × 2 nodes)


def test_a_node_rank_outside_the_nodes_or_no_master_is_refused():
    from fmae.cli.training import Rendezvous, rendezvous
    from fmae.errors import FmaeError

    assert rendezvous(2, 1, "node0.example.org:29500") == Rendezvous(2, 1, "node0.example.org", 29500)
    assert rendezvous(1, 0, None) is None
    for args, needles in (((2, 2, "h:29500"), ("--node-rank 2", "0 to 1")), ((2, 0, None), ("--master", "HOST:PORT")),
                          ((2, 0, "h:port"), ("--master h:port",)), ((1, 1, None), ("--nnodes N",))):
        with pytest.raises(FmaeError) as e:
            rendezvous(*args)
        assert all(n in str(e.value) for n in needles), str(e.value)


def test_each_task_of_a_two_node_slurm_job_gets_its_rank_and_node_0_as_master():
    """A faked Slurm environment (task 3 of 4, on the second of nodes node[7-8]): the submitted function's
    rendezvous comes from submitit's job environment, as torchrun would set it."""
    code = ("import os; from fmae.executors.slurm import _prepare_distributed as p; r = p(); "
            "print(r, *(os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')))")
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "node[7-8]"}
    env.pop("MASTER_PORT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rank, rank_env, world, local, addr, port = out.stdout.split()
    assert (rank, rank_env, world, local, addr) == ("3", "3", "4", "1", "node7") and 20000 <= int(port) <= 60000
