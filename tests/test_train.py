"""The engine end to end through the real CLI: every task on tiny synthetic data, the run folder
contract, determinism, resume after SIGTERM, checkpoints in the official MAE layout, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_fmae
from fmae.config import default_config_text
from fmae.run_spec import flatten

TINY = ["--model", "vit_tiny", "--batch-size", "8", "--set", "input_size=32", "--set", "num_workers=0",
        "--set", "log_every=1", "--set", "warmup_epochs=1"]
TIMING = {"t", "seconds", "images_per_s"}
# The shared AU run: IAT on, and an lr high enough that the loss curve moves (golden test).
AU_RUN = ["--epochs", "3", "--lambda-id", "0.5", "--seed", "1", "--set", "blr=0.05"]


def au_args(root: Path, *extra: str) -> list:
    return ["train", "bp4d", "--fold", "1", "--root", root, "--labels", root / "labels.jsonl", *TINY, *extra]


def only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture(scope="module")
def au_run(make_synth, tmp_path_factory) -> Path:
    """One AU run with identity-adversarial training, shared by the tests that read its folder."""
    runs = tmp_path_factory.mktemp("au_runs")
    root = make_synth("bp4d")
    result = run_fmae(*au_args(root, *AU_RUN), "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    return only_run(runs)


def test_au_run_folder_has_every_file_of_the_contract(au_run):
    names = {p.name for p in au_run.iterdir()}
    assert {"run.toml", "status.json", "metrics.jsonl", "summary.json", "train.log", "checkpoints",
            "predictions"} <= names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    assert {p.name for p in (au_run / "checkpoints").iterdir()} >= {"last.pt", "best.pt"}

    run_toml = tomllib.loads((au_run / "run.toml").read_text())
    cfg = flatten(run_toml["config"])  # [config.<section>] tables, one flat key each
    assert (cfg["task"], cfg["dataset"], cfg["fold"], cfg["seed"], cfg["model"]) == ("au", "bp4d", 1, 1, "vit_tiny")
    assert cfg["lambda_id"] == 0.5 and cfg["blr"] == 0.05 and cfg["weight_decay"] == 0.05 and cfg["input_size"] == 32
    assert run_toml["provenance"]["set_by"]["optim.weight_decay"].startswith("recipe bp4d/fmae")
    assert run_toml["provenance"]["set_by"]["identity.lambda_id"] == "command line"
    assert "-bp4d-f1-s1-l0.5-vit_tiny-" in au_run.name

    status = json.loads((au_run / "status.json").read_text())
    assert status["state"] == "done" and status["exit_code"] == 0 and status["pid"] > 0

    recs = records(au_run)
    train = [r for r in recs if r["split"] == "train"]
    test = [r for r in recs if r["split"] == "test"]
    # 6 subjects × 8 frames; fold 1 tests 2 subjects → 32 train frames → 4 steps of 8 per epoch.
    assert [r["step"] for r in train] == list(range(1, 13))
    assert all({"loss", "loss_au", "loss_id", "id_acc", "lr"} <= set(r) for r in train)
    assert all(abs(r["loss"] - r["loss_au"] - r["loss_id"]) < 1e-5 for r in train)
    assert [r["epoch"] for r in test] == [1, 2, 3]
    au = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
    for r in test:
        assert list(r["f1_05"]) == au and list(r["f1_best"]) == au
        assert abs(np.mean(list(r["f1_05"].values())) - r["f1_05_mean"]) < 1e-9
        assert 0.01 <= r["best_threshold"] <= 0.99

    summary = json.loads((au_run / "summary.json").read_text())
    best = max(test, key=lambda r: r["f1_best_mean"])
    assert summary["metric"] == "f1_best_mean" and "tuned on the test fold" in summary["metric_label"]
    assert summary["best_epoch"] == best["epoch"] and summary["best_value"] == best["f1_best_mean"]
    assert summary["epochs_done"] == 3

    pred = np.load(au_run / "predictions" / "best.npz")
    assert pred["probs"].shape == (16, 12) and pred["labels"].shape == (16, 12)
    assert int(pred["epoch"]) == best["epoch"]
    from fmae.metrics import au_scores

    rescored = au_scores(pred["probs"], pred["labels"])
    assert abs(rescored.f1_best_mean - best["f1_best_mean"]) < 1e-9  # the saved predictions re-score exactly

    log = (au_run / "train.log").read_text()
    assert "lr = blr 0.05 × batch 8 × accum 1 × 1 process(es) / 256" in log and "done:" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(au_run))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 12
    assert [e.value for e in events.Scalars("test/f1_best_mean")] == pytest.approx([r["f1_best_mean"] for r in test])



def test_the_trainer_leaves_its_files_whole_when_its_process_skips_the_teardown(au_run):
    """`fmae train` ends with os._exit (fmae/process_exit.py): TensorBoard must still hold every scalar
    metrics.jsonl holds (its writer buffers for 120 s unless closed), and train.log its last line."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(au_run), size_guidance={"scalars": 0})
    events.Reload()
    recs = records(au_run)
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in recs if r["split"] == "train"}, rel=1e-6)
    f1 = {e.step: e.value for e in events.Scalars("test/f1_best_mean")}
    assert f1 == pytest.approx({r["step"]: r["f1_best_mean"] for r in recs if r["split"] == "test"}, rel=1e-6)
    assert "done:" in (au_run / "train.log").read_text().splitlines()[-1]

def test_same_seed_gives_identical_numbers(au_run, make_synth, tmp_path):
    result = run_fmae(*au_args(make_synth("bp4d"), *AU_RUN),
                      "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert records(only_run(tmp_path)) == records(au_run)


def test_sigterm_cancels_and_resume_matches_an_unbroken_run(au_run, make_synth, tmp_path):
    root = make_synth("bp4d")
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "fmae", *map(str, au_args(root, *AU_RUN)), "--runs-dir", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    run = None
    while time.time() < deadline:  # stop it in the middle of epoch 2
        folders = [p for p in tmp_path.iterdir() if p.is_dir()]
        if folders and (folders[0] / "metrics.jsonl").exists():
            run = folders[0]
            steps = [r["step"] for r in records(run) if r["split"] == "train"]
            if steps and steps[-1] >= 5:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert run is not None
    assert proc.returncode == 143, stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled" and "cancelled" in status["error"]
    stopped_at = [r["step"] for r in records(run) if r["split"] == "train"][-1]
    assert stopped_at < 12, "the run ended before the signal: make it longer"

    resumed = run_fmae("exec", run)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert records(run) == records(au_run)  # every number equals the unbroken run's

    again = run_fmae("exec", run)
    assert_one_line_error(again, "this run is done")


def test_fer_run(make_synth, tmp_path):
    root = make_synth("rafdb")
    result = run_fmae("train", "rafdb", "--root", root, *TINY, "--epochs", "1", "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    assert "-rafdb-s0-vit_tiny-" in run.name  # FER runs carry no fold and no λ
    cfg = flatten(tomllib.loads((run / "run.toml").read_text())["config"])
    assert (cfg["task"], cfg["blr"], cfg["fold"]) == ("fer", 1e-3, 0)
    test = [r for r in records(run) if r["split"] == "test"]
    assert len(test) == 1 and 0.0 <= test[0]["accuracy"] <= 1.0
    pred = np.load(run / "predictions" / "best.npz")
    assert abs(float((pred["scores"].argmax(1) == pred["targets"]).mean()) - test[0]["accuracy"]) < 1e-12


def test_probe_id_and_eval_of_a_run(au_run, make_synth, tmp_path):
    root = make_synth("bp4d")
    probe = run_fmae("probe-id", au_run, "--dataset", "bp4d", "--root", root, "--labels", root / "labels.jsonl",
                     "--set", "batch_size=8", "--set", "num_workers=0", "--epochs", "2", "--runs-dir", tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert "identity probe top-1 accuracy:" in probe.stdout
    run = only_run(tmp_path)
    cfg = flatten(tomllib.loads((run / "run.toml").read_text())["config"])
    assert cfg["task"] == "id_probe" and cfg["input_size"] == 32 and cfg["source_run"] == au_run.name
    assert cfg["init"].endswith("best.pt")
    summary = json.loads((run / "summary.json").read_text())
    # 6 subjects × 8 frames (fewer than 100): each split 70:30 → 6 × 6 train, 6 × 2 test frames.
    pred = np.load(run / "predictions" / "best.npz")
    assert pred["targets"].shape == (12,)
    assert summary["best"]["accuracy"] == float((pred["scores"].argmax(1) == pred["targets"]).mean())

    evaluated = run_fmae("eval", au_run, "--runs-dir", tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr
    ev = only_run(tmp_path / "eval")
    best = json.loads((au_run / "summary.json").read_text())["best"]
    rec = records(ev)[-1]
    assert rec["epoch"] == best["epoch"]
    assert rec["f1_best_mean"] == pytest.approx(best["f1_best_mean"], abs=1e-12)
    assert rec["f1_05"] == pytest.approx(best["f1_05"], abs=1e-12)


def _mae_checkpoint(path: Path, model: str, img_size: int) -> None:
    """A checkpoint in the official MAE layout: bare encoder keys, its final norm, a decoder, `module.`."""
    import torch

    from fmae.models.encoders import create_encoder

    enc = create_encoder(model, img_size=img_size, global_pool=False)
    state = {f"module.{k}": v for k, v in enc.state_dict().items()}
    dim = enc.embed_dim
    state.update({"module.mask_token": torch.zeros(1, 1, 32), "module.decoder_embed.weight": torch.zeros(32, dim),
                  "module.decoder_pred.weight": torch.zeros(3 * 64, 32)})
    torch.save({"model": state, "epoch": 49}, path)


def test_init_from_an_official_mae_checkpoint_and_refusing_a_wrong_one(make_synth, tmp_path):
    root = make_synth("bp4d")
    good = tmp_path / "mae_tiny.pth"
    _mae_checkpoint(good, "vit_tiny", 64)  # pretrained at 64 px, fine-tuned at 32: pos_embed interpolated
    ok = run_fmae(*au_args(root, "--epochs", "1", "--init", good), "--runs-dir", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert f"loaded {good}" in (only_run(tmp_path / "ok") / "train.log").read_text()

    wrong = tmp_path / "mae_small.pth"
    _mae_checkpoint(wrong, "vit_small", 32)
    bad = run_fmae(*au_args(root, "--epochs", "1", "--init", wrong), "--runs-dir", tmp_path / "bad")
    line = assert_one_line_error(bad, str(wrong))
    assert "vit_tiny" in line
    # Issue 14.8: a run refused for bad input before its first step leaves no run folder behind.
    assert not any(p.is_dir() for p in (tmp_path / "bad").iterdir())
    assert "removed: refused before its first step" in bad.stderr


def test_non_finite_loss_fails_the_run_with_epoch_and_step(make_synth, tmp_path):
    result = run_fmae(*au_args(make_synth("bp4d"), "--epochs", "1", "--set", "blr=nan"), "--runs-dir", tmp_path)
    assert result.returncode == 1, result.stderr
    status = json.loads((only_run(tmp_path) / "status.json").read_text())
    assert status["state"] == "failed" and "loss is nan at epoch 1, step" in status["error"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--fold", "9"], "fold 9 does not exist for bp4d"),
    (["--model", "vit_huge"], "unknown model 'vit_huge'"),
    (["--set", "blr=fast"], "blr must be a number"),
    (["--set", "learning_rate=1"], "unknown setting 'learning_rate'"),
    (["--recipe", "fmae_xl"], "no recipe 'fmae_xl'"),
    (["--name", "../escape"], "run name"),
])
def test_bad_train_options_are_one_line_errors(make_synth, tmp_path, extra, needle):
    root = make_synth("bp4d")
    args = ["train", "bp4d", "--root", root, "--labels", root / "labels.jsonl", "--model", "vit_tiny"]
    if "--fold" not in extra:
        args += ["--fold", "1"]
    result = run_fmae(*args, *extra, "--runs-dir", tmp_path / "runs")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dry_run_shows_the_resolved_config_and_creates_nothing(tmp_path):
    result = run_fmae("train", "bp4d", "--fold", "2", "--recipe", "fmae_iat", "--model", "vit_large", "--dry-run",
                      "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lambda_id" in result.stdout and "2.0" in result.stdout and "recipe bp4d/fmae_iat" in result.stdout
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "data").exists()  # a dry run generates no synthetic data either


def test_dry_run_shows_the_config_by_section_at_80_columns_cutting_nothing(tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 3) / "bp4d"
    result = run_fmae("train", "bp4d", "--fold", "1", "--root", deep, "--labels", deep / "labels.jsonl", "--dry-run",
                      "--runs-dir", tmp_path / "runs", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") == 4]
    section_of, values, section = {}, {}, None
    for key, value, _ in cells:
        if key.startswith("["):
            section = key
        elif key:
            section_of[key], values[key], last = section, value, key
        else:  # a value too long for its column folds onto the next lines
            values[last] += value
    assert list(dict.fromkeys(section_of.values())) == ["[identity]", "[model]", "[optim]", "[schedule]",
                                                        "[augment]", "[data]", "[execution]"]
    assert (section_of["fold"], section_of["blr"], section_of["labels"], section_of["device"]) == (
        "[identity]", "[optim]", "[data]", "[execution]")
    assert "…" not in result.stdout and values["labels"] == str(deep / "labels.jsonl")


def test_dry_run_prints_brackets_in_values_and_sources_as_they_are(tmp_path):
    """The config table's console reads no markup, so nothing is escaped: `[x]` is shown, not `\\[x]`."""
    project = tmp_path / "study[a]"
    project.mkdir()
    (project / "fmae.toml").write_text(default_config_text())
    result = run_fmae("train", "bp4d", "--fold", "1", "--dry-run", "--set", "auto_augment=rand-m9[x]",
                      "--runs-dir", tmp_path / "runs", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "rand-m9[x]" in result.stdout and "study[a]" in result.stdout
    assert "\\[" not in result.stdout


GOLDEN = Path(__file__).parent / "golden" / "au_bp4d_vit_tiny_iat.json"


def test_golden_curve(au_run):
    """Catches silent numerical changes (init, data order, augmentation, loss, schedule). After an
    intended change, regenerate with FMAE_UPDATE_GOLDEN=1 and say why in the commit."""
    recs = records(au_run)
    curve = {
        "train_loss": [r["loss"] for r in recs if r["split"] == "train"],
        "lr": [r["lr"] for r in recs if r["split"] == "train"],
        "test_auc_mean": [r["auc_mean"] for r in recs if r["split"] == "test"],
    }
    if os.environ.get("FMAE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert curve["lr"] == pytest.approx(golden["lr"], rel=1e-12)
    # Loose enough for another CPU's float rounding, far tighter than any real change.
    assert curve["train_loss"] == pytest.approx(golden["train_loss"], rel=1e-4)
    assert curve["test_auc_mean"] == pytest.approx(golden["test_auc_mean"], abs=2e-3)


def test_gradient_accumulation_equals_the_larger_batch(make_synth, tmp_path):
    """batch 8 × accum 2 sees the same images as batch 16 (per-item augmentation) and averages the same
    gradients: same lr, same losses, same model (up to float rounding). Clipping acts on the sum."""
    root = make_synth("bp4d")
    common = ["--epochs", "2", "--set", "drop_path=0.0", "--set", "clip_grad=0.5", "--set", "blr=0.05"]
    args = au_args(root, *common)
    args[args.index("--batch-size") + 1] = "16"
    big = run_fmae(*args, "--runs-dir", tmp_path / "big")
    small = run_fmae(*au_args(root, *common, "--set", "accum_iter=2"), "--runs-dir", tmp_path / "small")
    assert big.returncode == 0 and small.returncode == 0, big.stderr + small.stderr
    a, b = records(only_run(tmp_path / "big")), records(only_run(tmp_path / "small"))
    ea = [r for r in a if r["split"] == "train_epoch"]
    eb = [r for r in b if r["split"] == "train_epoch"]
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [2, 4]
    assert [r["loss"] for r in ea] == pytest.approx([r["loss"] for r in eb], rel=1e-5)
    ta = [r["auc_mean"] for r in a if r["split"] == "test"]
    tb = [r["auc_mean"] for r in b if r["split"] == "test"]
    assert ta == pytest.approx(tb, abs=1e-6)


def test_two_process_ddp_equals_one_process_with_the_global_batch(make_synth, tmp_path):
    """torchrun + gloo on the CPU: 2 processes × batch 8 see the batches 1 process × 16 sees, DDP
    averages the same gradients, and the test set is gathered whole — the numbers agree."""
    root = make_synth("bp4d")
    common = ["--epochs", "2", "--lambda-id", "0.5", "--set", "drop_path=0.0", "--set", "blr=0.05"]
    args = au_args(root, *common)
    args[args.index("--batch-size") + 1] = "16"
    one = run_fmae(*args, "--runs-dir", tmp_path / "one")
    two = run_fmae(*au_args(root, *common, "--nproc", "2"), "--runs-dir", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert two.stdout.count("run folder:") == 1
    a, b = records(only_run(tmp_path / "one")), records(only_run(tmp_path / "two"))
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_au", "loss_id", "lr", "auc_mean", "f1_best_mean"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["split"], ra["step"], key)
    pred = np.load(only_run(tmp_path / "two") / "predictions" / "best.npz")
    assert pred["probs"].shape == (16, 12)  # every test frame once, gathered from both ranks
    status = json.loads((only_run(tmp_path / "two") / "status.json").read_text())
    assert status["state"] == "done"


def _start(args: list, runs: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    return subprocess.Popen([sys.executable, "-m", "fmae", *map(str, args), "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_train_step(runs: Path, step: int, timeout: float = 180) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        folders = [p for p in runs.iterdir() if p.is_dir()]
        if folders and (folders[0] / "metrics.jsonl").exists():
            steps = [r["step"] for r in records(folders[0]) if r["split"] == "train"]
            if steps and steps[-1] >= step:
                return folders[0]
        time.sleep(0.01)
    raise AssertionError(f"no train step {step} within {timeout} s")


def test_kill_9_before_the_first_checkpoint_then_retry_equals_an_unbroken_run(au_run, make_synth, tmp_path):
    """Issue 22.2: a restart from the beginning clears the killed attempt's records (metrics and
    TensorBoard events), so the run folder reads as an unbroken run's."""
    proc = _start(au_args(make_synth("bp4d"), *AU_RUN), tmp_path)
    run = _wait_for_train_step(tmp_path, 2)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (run / "checkpoints" / "last.pt").exists(), "killed after the first checkpoint: kill sooner"
    assert [r["step"] for r in records(run) if r["split"] == "train"][:2] == [1, 2]
    resumed = run_fmae("exec", run)
    assert resumed.returncode == 0, resumed.stderr
    assert records(run) == records(au_run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert "cleared the earlier attempt's metrics.jsonl" in (run / "train.log").read_text()


def test_after_sigterm_status_says_the_checkpointed_step(make_synth, tmp_path):
    """Issue 14.8: with heartbeats only every few steps, status.json still ends on the step the
    checkpoint holds (the one a resume continues from)."""
    import torch

    proc = _start(au_args(make_synth("bp4d"), "--epochs", "4", "--set", "log_every=3"), tmp_path)
    run = _wait_for_train_step(tmp_path, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    status = json.loads((run / "status.json").read_text())
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert status["state"] == "cancelled" and status["step"] == saved["step"] >= 3
    assert f"step {saved['step']}" in status["error"]


def test_a_cancel_right_after_an_epochs_last_step_resumes_to_an_unbroken_runs_records(make_synth, tmp_path,
                                                                                     monkeypatch):
    """Found by bench/chaos_soak.py: a SIGTERM that lands on the last step of an epoch checkpoints at
    (epoch, last batch); the resumed process makes no update in that epoch, and its epoch records must
    still carry the lr of the last update, as an unbroken run's do."""
    from fmae.train import trainer as T

    root = make_synth("bp4d")
    whole = run_fmae(*au_args(root, "--epochs", "2"), "--runs-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    queued = run_fmae("queue", "add", "bp4d", "--folds", "1", "--seeds", "0", "--root", root, "--labels",
                      root / "labels.jsonl", *TINY[:2], "--set", "batch_size=8", *TINY[4:],  # queue add: no --batch-size
                      "--epochs", "2", "--gpus-per-run", "0", "--no-scheduler",
                      "--runs-dir", tmp_path / "queued")
    assert queued.returncode == 0, queued.stderr
    run = only_run(tmp_path / "queued")
    with monkeypatch.context() as m:  # the cancel lands right after step 4, the last of epoch 1
        m.setattr(T.Trainer, "_stop_agreed", lambda self: self.step == 4)
        assert T.execute(run, resume=True, quiet=True) == T.EXIT_CANCELLED
    assert T.execute(run, resume=True, quiet=True) == 0
    assert records(run) == records(only_run(tmp_path / "whole"))
