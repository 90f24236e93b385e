"""The bad-input corpus (tests/bad_inputs/cases.toml): every bad file or command line gets exit code 2, one
`error:` line naming the file and what to do, no traceback, and leaves everything that existed untouched.
Plus the security points: names and tags cannot leave the runs folder, checkpoints load without running
code, fmae.toml is data, and no module builds shell strings or unpickles untrusted data.

The CLI cases run as real `python -m fmae` processes, a few at a time (they are torch-free, ~0.5 s each);
the checkpoint cases run in-process through fmae's one checkpoint loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, CliResult, run_fmae
from fmae.errors import FmaeError

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = {c["id"]: c for c in tomllib.loads((CORPUS / "cases.toml").read_text(encoding="utf-8"))["case"]}
CLI_FEEDS = ("labels", "image", "config", "run_file", "args")
BASE_LINES = [  # one subject of each BP4D fold: every fold has a train and a test split
    '{"img_path": "F001_T1/frame_1.jpg", "AUs": [1, 2]}',
    '{"img_path": "F003_T1/frame_1.jpg", "AUs": [999, 999, 4, 999, 999, 999, 999, 999, 999, 999, 999, 999]}',
    '{"img_path": "F004_T1/frame_1.jpg", "AUs": []}',
]
RAN_A_SHELL = "fmae-bad-input-ran-a-shell"
RAN_CODE = "fmae-bad-input-ran-code"


def test_the_corpus_is_what_the_docs_count():
    """Every case has an id, a feed the tests know, and its file; docs/robustness.md gives the count."""
    feeds = set(CLI_FEEDS) | {"checkpoint", "tags", "metrics"}
    for case in CASES.values():
        assert case["feed"] in feeds, case
        assert "file" in case or case["feed"] in ("args", "tags") or "remove" in case, case
        assert "file" not in case or (CORPUS / case["file"]).is_file(), case
    listed = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()
              and p.name not in ("cases.toml", "make_checkpoints.py", "make_images.py") and "__pycache__" not in p.parts}
    assert listed == {c["file"] for c in CASES.values() if "file" in c}, "every corpus file is a case"
    doc = (REPO / "docs" / "robustness.md").read_text()
    assert f"{len(CASES)} bad inputs" in doc


# --- building a case's folder -------------------------------------------------------------------------

def tiny_jpeg(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (128, 96, 64)).save(path, "JPEG")


def listed_paths(labels: Path) -> list[str]:
    out = []
    for line in labels.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("img_path"), str) and "404" not in obj["img_path"]:
            out.append(obj["img_path"])
    return out


def make_dataset(root: Path, labels: Path) -> None:
    for rel in listed_paths(labels):
        tiny_jpeg(root / rel)


def make_run(runs: Path) -> Path:
    from fmae.runs import RunDir

    config = {"task": "au", "dataset": "bp4d", "fold": 1, "seed": 0, "lambda_id": 0.0, "model": "vit_tiny",
              "recipe": "fmae", "epochs": 2}
    run = RunDir.create(runs, "20261128-041233-bp4d-f1-s0-l0-vit_tiny-7c2a", config, {"command": ["fmae", "test"]})
    run.update_status(state="done", exit_code=0)
    run.write_summary({"run_id": run.id, "task": "au", "dataset": "bp4d", "fold": 1, "seed": 0})
    return run.path


class ReadOnly:
    """A folder this user cannot write to: chmod for a normal user; root ignores modes, so there the
    folder is made immutable (chattr +i) — and the case is skipped where neither works."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        if os.geteuid() != 0:
            path.chmod(0o555)
            self.undo = lambda: path.chmod(0o755)
        elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
            self.undo = lambda: subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.rmdir()
            self.path, self.undo = None, lambda: None


@dataclass
class Prepared:
    case: dict
    folder: Path
    args: list[str]
    skip: str = ""


def prepare(case: dict, folder: Path) -> Prepared:
    """The case's folder (the bad file, a dataset, a run folder) and its command line."""
    folder.mkdir(parents=True)
    feed = case["feed"]
    file = folder / Path(case["file"]).name if "file" in case else None
    if file is not None and feed != "run_file":
        shutil.copyfile(CORPUS / case["file"], file)
    root, labels, runs = folder / "root", folder / "labels.jsonl", folder / "runs"
    labels.write_text("".join(line + "\n" for line in BASE_LINES))
    make_dataset(root, labels)
    fill = {"file": str(file), "root": str(root), "labels": str(labels), "runs": str(runs), "tmp": str(folder)}
    args = case.get("args")
    skip = ""
    if feed == "labels":
        make_dataset(root, file)
        args = args or ["data", "check", "bp4d", "--root", "{root}", "--labels", "{file}"]
    elif feed == "image":
        target = root / "F008_T1" / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(file, target)
        with labels.open("a") as f:
            f.write(json.dumps({"img_path": f"F008_T1/{file.name}", "AUs": [1]}) + "\n")
        args = args or ["data", "check", "bp4d", "--root", "{root}", "--labels", "{labels}"]
    elif feed == "config":
        args = args or ["config", "show", "--config", "{file}"]
    elif feed == "run_file":
        run = make_run(runs)
        fill["run"] = str(run)
        if "remove" in case:
            (run / case["remove"]).unlink()
        if "file" in case:
            target = (run / case["as"]).resolve()
            assert folder in target.parents
            shutil.copyfile(CORPUS / case["file"], target)
        args = args or ["exec", "{run}"]
    if "{readonly}" in (args or []):
        ro = ReadOnly(folder / "readonly-runs")
        fill["readonly"] = str(ro.path)
        CLEANUPS.append(ro.undo)
        skip = "" if ro.path else "cannot make a read-only folder here (root without chattr)"
    args = [a.format(**fill) for a in args or []]
    return Prepared(case, folder, args, skip)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `folder`: mode and content hash (folders: their mode only). The run
    cache `fmae report` keeps in a runs folder (fmae/run_cache.py) and the app's index of it
    (run_watch.INDEX_NAME) are no files of the user's: left out."""
    from fmae.run_cache import CACHE_NAME
    from fmae.run_watch import INDEX_NAME

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.name in (CACHE_NAME, INDEX_NAME):
            continue
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (st.st_mode, digest)
    return out


CLEANUPS: list = []


@dataclass
class Outcome:
    prepared: Prepared
    before: dict
    after: dict
    result: CliResult | None


# Runs `fmae.cli.main` — what `python -m fmae` runs — once per case inside one interpreter, each case with
# its own argv, working folder and captured stdout/stderr: the CLI's real code path, without paying the
# interpreter and import start-up per case. test_batched_cases_answer_as_separate_processes checks that
# a case answers the same in a process of its own.
DRIVER = r"""
import contextlib, io, json, os, sys
cases_path, results_path = sys.argv[1:3]
cases = json.load(open(cases_path))
from fmae.cli import main
results = []
for case in cases:
    os.chdir(case["cwd"])
    sys.argv = ["fmae", *case["args"]]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
with open(results_path, "w") as f:
    json.dump(results, f)
"""


def run_batched(prepared: list[Prepared], work: Path) -> list[CliResult]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "cases.json").write_text(json.dumps([{"args": p.args, "cwd": str(p.folder)} for p in prepared]))
    env = {k: v for k, v in os.environ.items() if k != "FMAE_CONFIG"}
    env.update(COLUMNS="200", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(work / "cases.json"), str(work / "results.json")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [CliResult(**r) for r in json.loads((work / "results.json").read_text())]


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory):
    """Every CLI case run once (two driver processes side by side); each test then reads its own outcome."""
    base = tmp_path_factory.mktemp("bad_inputs")
    prepared = [prepare(c, base / c["id"]) for c in CASES.values() if c["feed"] in CLI_FEEDS]
    befores = {p.case["id"]: snapshot(p.folder) for p in prepared}
    runnable = [p for p in prepared if not p.skip]
    halves = [runnable[0::2], runnable[1::2]]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(run_batched, halves, [base / ".driver0", base / ".driver1"]))
        results = {p.case["id"]: r for half, rs in zip(halves, answers) for p, r in zip(half, rs)}
        outcomes = {p.case["id"]: Outcome(p, befores[p.case["id"]], snapshot(p.folder), results.get(p.case["id"]))
                    for p in prepared}
    finally:
        for undo in CLEANUPS:
            undo()
    return outcomes


@pytest.mark.parametrize("case_id", [i for i, c in CASES.items() if c["feed"] in CLI_FEEDS])
def test_cli_case(cli_outcomes, case_id):
    o = cli_outcomes[case_id]
    case, result = o.prepared.case, o.result
    if o.prepared.skip:
        pytest.skip(o.prepared.skip)
    assert result is not None
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "internal error" not in out, out
    assert result.returncode == 2, (result.returncode, out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    if case["feed"] in ("labels", "image") and "args" not in case:  # data check lists each problem, then one error line
        assert len(problems) == case.get("problems", 1), result.stderr
        reporting = problems[0]
    elif case["id"] == "run-summary-cut":  # the report warns about the folder and goes on
        reporting = next((line for line in warnings if "summary.json" in line), "")
    else:
        reporting = errors[0] if errors else ""
    assert len(errors) == 1, result.stderr
    for needle in case["expect"]:
        assert needle in reporting, (needle, reporting)
    assert o.after == o.before, "the bad input changed files that existed before"
    assert not list(o.prepared.folder.rglob(f"*{RAN_A_SHELL}*"))


def test_batched_cases_answer_as_separate_processes(cli_outcomes):
    """The batch driver changes nothing: a case run as its own `python -m fmae` process answers the same."""
    for case_id in ("label-unknown-au", "config-syntax-error", "run-status-cut"):
        o = cli_outcomes[case_id]
        alone = run_fmae(*o.prepared.args, cwd=o.prepared.folder)
        assert (alone.returncode, alone.stderr) == (o.result.returncode, o.result.stderr), case_id


# --- in-process cases -----------------------------------------------------------------------------

@pytest.mark.parametrize("case_id", [i for i, c in CASES.items() if c["feed"] == "checkpoint"])
def test_checkpoint_case(case_id, tmp_path, monkeypatch):
    """fmae's one loader refuses each bad checkpoint in one line; the hostile ones run nothing."""
    from fmae.models.checkpoint import load_pretrained
    from fmae.models.encoders import create_encoder
    from fmae.models.heads import FineTuneModel

    case = CASES[case_id]
    path = tmp_path / Path(case["file"]).name
    shutil.copyfile(CORPUS / case["file"], path)
    monkeypatch.chdir(tmp_path)  # where the hostile pickles would create their marker file
    model = FineTuneModel(create_encoder("vit_tiny", img_size=32), 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FmaeError) as e:
        load_pretrained(model, path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    for needle in case["expect"]:
        assert needle in message, (needle, message)
    assert not (tmp_path / RAN_CODE).exists(), "unpickling ran code"
    assert all(v.equal(before[k]) for k, v in model.state_dict().items()), "a refused checkpoint changed the model"
    assert path.read_bytes() == (CORPUS / case["file"]).read_bytes()


def test_tag_case(tmp_path):
    from fmae.runs import RunDir

    case = CASES["run-tag-escapes"]
    run = RunDir(make_run(tmp_path / "runs"))
    run.write_tags(["kept"])
    before = snapshot(tmp_path)
    with pytest.raises(FmaeError) as e:
        run.write_tags(case["tags"])
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in case["expect"])
    assert snapshot(tmp_path) == before and run.read_tags() == ["kept"]
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_metrics_case_last_line_cut(tmp_path):
    """A cut last line is a line being written: readers skip it (without calling it bad), and the next
    writer starts on a fresh line, so neither the cut record's neighbours nor the new record are lost."""
    from fmae.runs import MetricsTail, RunDir, read_metrics

    run = RunDir(make_run(tmp_path / "runs"))
    shutil.copyfile(CORPUS / CASES["run-metrics-last-line-cut"]["file"], run.metrics_path)
    tail = MetricsTail(run.metrics_path)
    assert [r["step"] for r in tail.read_new()] == [1, 2] and tail.bad_lines == 0
    RunDir(run.path).append_metrics({"split": "train", "epoch": 1, "step": 3, "loss": 0.5})  # e.g. a resumed run
    records = read_metrics(run.metrics_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in tail.read_new()] == [3] and tail.bad_lines == 0 and tail.resets == 0
    assert run.metrics_path.read_text().endswith("\n") and "f1_best_mean" not in run.metrics_path.read_text()


@pytest.mark.parametrize("case_id", [i for i, c in CASES.items() if c["feed"] == "image"])
def test_the_trainer_finds_bad_images_before_training(case_id, tmp_path):
    """What the trainer checks before its first step (no full decode): the same images are refused."""
    from fmae.data.image_check import check_image_files

    case = CASES[case_id]
    good = [tmp_path / f"good{i}.jpg" for i in range(3)]
    for p in good:
        tiny_jpeg(p)
    bad = tmp_path / Path(case["file"]).name
    shutil.copyfile(CORPUS / case["file"], bad)
    check_image_files({"fold 1 train split": good})
    with pytest.raises(FmaeError) as e:
        check_image_files({"fold 1 train split": [good[0], bad, good[1]]})
    assert str(e.value).startswith(f"{bad}: ") and "in the fold 1 train split" in str(e.value)
    assert "fmae data check" in str(e.value) and "\n" not in str(e.value)


def test_the_trainer_reports_every_bad_image_and_accepts_padded_jpegs(tmp_path, caplog):
    from fmae.data.image_check import check_image_files

    bad = []
    for case in (c for c in CASES.values() if c["feed"] == "image"):
        bad.append(tmp_path / Path(case["file"]).name)
        shutil.copyfile(CORPUS / case["file"], bad[-1])
    missing = tmp_path / "missing.jpg"
    padded = tmp_path / "padded.jpg"  # some cameras write bytes after the end marker: still a good image
    tiny_jpeg(padded)
    padded.write_bytes(padded.read_bytes() + b"\0" * 5000)
    check_image_files({"train split": [padded]})
    with caplog.at_level("ERROR", logger="fmae.data"), pytest.raises(FmaeError) as e:
        check_image_files({"train split": [padded, *bad, missing]})
    assert f"; {len(bad)} more bad images listed in the log" in str(e.value)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == len(bad) + 1 and all(any(str(p) in m for m in logged) for p in [*bad, missing])


def test_a_training_run_reports_every_bad_image_of_both_splits_before_its_first_step(make_synth, tmp_path, caplog):
    """Through the trainer's own data setup (AUTask.build_data): a bad train image and a bad test image
    are both reported, before any model exists, instead of the run dying when it reaches one."""
    from fmae.config import load_project
    from fmae.registry import get_dataset
    from fmae.run_config import resolve_run_config
    from fmae.train.tasks import AUTask

    root = tmp_path / "bp4d"
    shutil.copytree(make_synth("bp4d"), root)
    spec = get_dataset("bp4d")
    images = sorted(root.rglob("*.jpg"))
    in_train = next(p for p in images if spec.parse_subject(p.relative_to(root)) not in spec.test_subjects(1))
    in_test = next(p for p in images if spec.parse_subject(p.relative_to(root)) in spec.test_subjects(1))
    in_train.write_bytes(b"")
    in_test.write_bytes(in_test.read_bytes()[:300])
    cfg = resolve_run_config(load_project(None, tmp_path / "runs", cwd=tmp_path), "bp4d", fold=1, seed=0,
                             cli={"model": "vit_tiny", "input_size": 32}, root=root,
                             labels=root / "labels.jsonl").values
    with caplog.at_level("ERROR", logger="fmae.data"), pytest.raises(FmaeError) as e:
        AUTask(cfg).build_data()
    message = str(e.value)
    assert message.startswith(f"{in_train}: image file is empty (0 bytes) in the fold 1 train split")
    assert "; 1 more bad images listed in the log" in message and "\n" not in message
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"{in_test}: image cannot be decoded" in logged and "(fold 1 test split)" in logged


# --- security -------------------------------------------------------------------------------------

def test_names_that_would_leave_the_runs_folder_are_refused(tmp_path):
    from fmae.runs import RunDir, check_name, make_run_id

    for bad in ("../x", "..", "a/b", "/abs", "a\\b", "x/../../y", ".hidden", "", "a" * 81, "a\0b", "a b", "~root"):
        with pytest.raises(FmaeError):
            check_name(bad)
        with pytest.raises(FmaeError):
            make_run_id("bp4d", "vit_tiny", 0, name=bad)
    for bad_id in ("../escape", "a/../../b", "/tmp/x", "..", "x\0y"):
        with pytest.raises(FmaeError):
            RunDir.create(tmp_path / "runs", bad_id, {"task": "au"}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["runs"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_files_are_readable_by_the_team(tmp_path):
    """Atomic replacement goes through a private temp file; the result keeps the usual mode, so another
    user's app can read a shared runs folder (and a file whose mode was changed keeps it)."""
    from fmae.runs import RunDir

    run = RunDir(make_run(tmp_path / "runs"))
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("run.toml", "status.json", "summary.json"):
        assert (run.path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    run.status_path.chmod(0o640)
    run.update_status(state="failed")
    assert run.status_path.stat().st_mode & 0o777 == 0o640


def test_checkpoints_are_written_with_the_usual_mode_and_without_stale_temps(tmp_path):
    import torch

    from fmae.models.checkpoint import read_checkpoint, save_checkpoint

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".last.pt.{dead.pid}.abcd1234.tmp"  # what a writer killed mid-save leaves
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".last.pt.{os.getppid()}.efgh5678.tmp"  # a live writer's: not ours to delete
    alive.write_bytes(b"being written")
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}})
    assert not stale.exists() and alive.exists()
    assert read_checkpoint(tmp_path / "last.pt")["model"]["w"].sum() == 2
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask


# Patterns that would run code from data or hand user input to a shell. Each exception is named with why.
_DANGEROUS = {
    r"shell\s*=\s*True": "a shell string",
    r"\bos\.(system|popen|exec[lv]p?e?)\(": "a shell or exec",
    r"(?<![\w.])(eval|exec)\(": "eval/exec",
    r"\bpickle\.loads?\(|\bpickle_load\(|\bdill\.|\bcloudpickle\.": "unpickling",
    r"weights_only\s*=\s*False": "torch.load without weights_only",
    r"allow_pickle\s*=\s*True": "numpy pickles",
    r"\byaml\.(load|unsafe_load)\(": "yaml objects",
    r"\bmarshal\.loads?\(|\bshelve\.": "marshal/shelve",
}
_ALLOWED = {
    # submitit's own result file in runs/<id>/slurm/, written by the submitit job it launched: the runs
    # folder is the trust boundary (documented in docs/robustness.md).
    ("fmae/executors/slurm.py", "unpickling"),
}


def test_no_module_runs_code_from_data_or_builds_shell_strings():
    found = []
    for path in sorted([*REPO.joinpath("fmae").rglob("*.py"), *REPO.joinpath("fmae_tui").rglob("*.py")]):
        rel = str(path.relative_to(REPO))
        code = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
        for pattern, what in _DANGEROUS.items():
            if re.search(pattern, code) and (rel, what) not in _ALLOWED:
                found.append(f"{rel}: {what}")
        for match in re.finditer(r"torch\.load\((?P<args>[^)]*)\)", code):
            if "weights_only=True" not in match["args"]:
                found.append(f"{rel}: torch.load without weights_only=True")
    assert not found, found


def test_fmae_toml_is_data_only(tmp_path):
    """Shell syntax in fmae.toml stays text, wherever the value goes (paths, runs_dir, the set command)."""
    from fmae.config import load_project

    evil = f"$(touch {RAN_A_SHELL})`touch {RAN_A_SHELL}`; touch {RAN_A_SHELL}"
    path = tmp_path / "fmae.toml"
    path.write_text(f'runs_dir = "{evil}"\n[defaults]\nmodel = "vit_tiny"\n')
    project = load_project(path)
    assert project.runs_dir == (tmp_path / evil).resolve()
    result = run_fmae("config", "set", "defaults.init", evil, "--config", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_project(path).defaults["init"] == evil
    assert not list(tmp_path.rglob(f"*{RAN_A_SHELL}")) and not list(Path.cwd().glob(f"*{RAN_A_SHELL}"))
