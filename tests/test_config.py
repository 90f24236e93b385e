"""fmae.toml: discovery, validation with one-line errors, comment-keeping writes, and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, run_fmae
from fmae.config import default_config_text, find_config, layer, load_project, parse_set_options, update_config
from fmae.errors import FmaeError
from fmae.recipes import finetune_recipe


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fmae.toml"
    path.write_text(text)
    return path


def _committed(path: str) -> str | None:
    """A file as the checkout's HEAD commit holds it; None outside a git checkout."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{path}"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode() if done.returncode == 0 else None


def test_repository_config_is_the_builtin_default():
    # The committed fmae.toml, not the working copy: `fmae synth --register` and `fmae config set` edit the
    # user's fmae.toml (as the README says), and a user's configuration must never fail the suite.
    committed, default = _committed("fmae.toml"), _committed("fmae/default_fmae.toml")
    if committed is None or default is None:
        pytest.skip("not a git checkout: nothing committed to compare")
    assert committed == default


def test_a_utf8_bom_is_accepted_and_kept(tmp_path):
    """Windows editors start a file with a BOM; fmae.toml reads as without it, and an edit keeps it."""
    path = tmp_path / "fmae.toml"
    path.write_bytes("\ufeff".encode() + b'runs_dir = "r"\n[compute]\ncpu_slots = 2\n')
    assert load_project(path).cpu_slots == 2
    shown = run_fmae("config", "show", "--config", path, cwd=tmp_path)
    assert shown.returncode == 0 and "cpu_slots=2" in shown.stdout, shown.stderr
    update_config(path, {"compute.cpu_slots": 3})
    assert path.read_bytes().startswith("\ufeff".encode()) and load_project(path).cpu_slots == 3


def test_default_config_loads_and_points_at_synthetic_data(tmp_path):
    project = load_project(write(tmp_path, default_config_text()))
    assert project.runs_dir == tmp_path / "runs"
    assert project.gpus == "auto" and project.device == "auto" and project.executor == "local"
    assert set(project.datasets) == {"bp4d", "bp4d_plus", "disfa", "rafdb", "affectnet8", "affectnet7"}
    bp4d = project.dataset("bp4d")
    assert bp4d.root == tmp_path / "data/synth/bp4d" and bp4d.synthetic.subjects == 41


def test_discovery_walks_up_like_git(tmp_path, monkeypatch):
    path = write(tmp_path / "proj", default_config_text())
    deep = tmp_path / "proj" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv("FMAE_CONFIG", raising=False)
    assert find_config(cwd=deep) == path
    assert find_config(cwd=tmp_path) is None
    assert load_project(cwd=tmp_path).path is None  # built-in defaults, relative to the cwd
    assert load_project(cwd=tmp_path).runs_dir == tmp_path.resolve() / "runs"
    other = write(tmp_path / "other", default_config_text())
    monkeypatch.setenv("FMAE_CONFIG", str(other))
    assert find_config(cwd=deep) == other  # the variable beats discovery
    assert find_config(path, cwd=deep) == path  # --config beats the variable
    monkeypatch.setenv("FMAE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(FmaeError, match="FMAE_CONFIG: config file .*nope.toml does not exist"):
        find_config(cwd=deep)


def test_runs_dir_override(tmp_path):
    project = load_project(write(tmp_path, default_config_text()), runs_dir=tmp_path / "elsewhere")
    assert project.runs_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("edit, message", [
    (("\ngpus = \"auto\"", "\ngpu = \"auto\""), "fmae.toml:11: unknown key 'compute.gpu'"),
    (("runs_per_gpu = 1", "runs_per_gpu = \"two\""), "fmae.toml:13: compute.runs_per_gpu must be an integer, got 'two'"),
    (("cpu_slots = 1", "cpu_slots = true"), "compute.cpu_slots must be an integer, got True"),
    (("kind = \"local\"", "kind = \"cloud\""), "executor.kind must be one of local, slurm"),
    (("gpus = \"auto\"", "gpus = \"all\""), "compute.gpus must be \"auto\" or a list of GPU indices"),
    (("[datasets.bp4d]", "[datasets.bp5d]"), "[datasets.bp5d] is not a known dataset"),
    (("seed = 0 }\n\n[datasets.bp4d_plus]", "sed = 0 }\n\n[datasets.bp4d_plus]"), "unknown key 'datasets.bp4d.synthetic.sed'"),
    (("runs_dir = \"runs\"", "runs_dir = \"runs\"\n[trainer]\nx = 1"), "unknown section [trainer]"),
    (("runs_per_gpu = 1", "runs_per_gpu = = 1"), "fmae.toml:13:"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, edit, message):
    old, new = edit
    text = default_config_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(FmaeError) as e:
        load_project(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_config_through_the_cli_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, default_config_text().replace("cpu_slots = 1", "cpu_slots = [1"))
    before = path.read_bytes()
    result = run_fmae("config", "show", "--config", path)
    assert_one_line_error(result, "fmae.toml:", "TOML syntax error")
    assert path.read_bytes() == before


def test_update_keeps_comments_and_refuses_invalid(tmp_path):
    path = write(tmp_path, default_config_text())
    update_config(path, {"compute.cpu_slots": 2, "datasets.bp4d.root": "/data/BP4D", "datasets.bp4d.synthetic": None})
    text = path.read_text()
    assert "# With no GPU, how many runs may train at once on the CPU." in text
    assert "cpu_slots = 2" in text
    project = load_project(path)
    assert project.cpu_slots == 2 and project.dataset("bp4d").root == Path("/data/BP4D")
    assert project.dataset("bp4d").synthetic is None
    before = path.read_bytes()
    with pytest.raises(FmaeError, match="compute.cpu_slots must be an integer"):
        update_config(path, {"compute.cpu_slots": "many"})
    assert path.read_bytes() == before  # nothing written


def test_config_set_command_keeps_comments(tmp_path):
    path = write(tmp_path, default_config_text())
    result = run_fmae("config", "set", "compute.cpu_slots", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cpu_slots = 3" in path.read_text() and "# fmae project configuration" in path.read_text()
    assert_one_line_error(run_fmae("config", "set", "compute.cpu_slot", "3", cwd=tmp_path),
                          "unknown key 'compute.cpu_slot'")


def test_precedence_recipe_then_toml_then_command_line(tmp_path):
    text = default_config_text() + "\n[overrides.bp4d]\nblr = 3e-4\nepochs = 5\n"
    project = load_project(write(tmp_path, text))
    resolved = layer(
        ("recipe", finetune_recipe("bp4d", "fmae_iat")),
        ("fmae.toml", project.overrides["bp4d"]),
        ("command line", parse_set_options(["epochs=7", "lambda_id=1"])),
    )
    assert resolved.values["blr"] == 3e-4 and resolved.sources["blr"] == "fmae.toml"
    assert resolved.values["epochs"] == 7 and resolved.sources["epochs"] == "command line"
    assert resolved.values["lambda_id"] == 1.0 and isinstance(resolved.values["lambda_id"], float)
    assert resolved.values["batch_size"] == 64 and resolved.sources["batch_size"] == "recipe"
    with pytest.raises(FmaeError, match="command line: unknown setting 'epoch'"):
        layer(("recipe", finetune_recipe("bp4d")), ("command line", {"epoch": 3}))
    with pytest.raises(FmaeError, match="command line: epochs must be an integer, got 'many'"):
        layer(("recipe", finetune_recipe("bp4d")), ("command line", parse_set_options(["epochs=many"])))


def test_recipe_command_shows_sources(tmp_path):
    write(tmp_path, default_config_text() + "\n[overrides.bp4d]\nblr = 3e-4\n")
    result = run_fmae("config", "recipe", "bp4d", "--recipe", "fmae_iat", "--set", "epochs=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows: dict[str, str] = {}
    key = ""
    for line in result.stdout.splitlines():
        if line.count("│") >= 3:  # a long value folds onto lines with an empty key cell
            key = line.split("│")[1].strip() or key
            rows[key] = rows.get(key, "") + "".join(line.split("│")[2:])
    assert "0.0003" in rows["blr"] and "overrides.bp4d" in rows["blr"]
    assert "4" in rows["epochs"] and "command line" in rows["epochs"]
    assert "2.0" in rows["lambda_id"] and "recipe bp4d/fmae_iat" in rows["lambda_id"]


def test_set_options_parse_toml_scalars_and_bare_text():
    assert parse_set_options(["fast_augment=false", "fused_attn=true", "blr=3e-4", "epochs=7",
                              'auto_augment=""', "model=vit_tiny", "data_cache=caches/bp4d"]) == {
        "fast_augment": False, "fused_attn": True, "blr": 3e-4, "epochs": 7, "auto_augment": "",
        "model": "vit_tiny", "data_cache": "caches/bp4d"}


def test_a_boolean_set_option_reaches_a_dry_run(tmp_path):
    """`--set fast_augment=false` once crashed: tomlkit hands back booleans without .unwrap()."""
    from conftest import run_fmae

    made = run_fmae("train", "bp4d", "--fold", "1", "--model", "vit_tiny", "--dry-run", "--set", "fast_augment=false",
                    "--set", "fused_attn=false", "--root", tmp_path, "--labels", tmp_path / "labels.jsonl", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "fast_augment" in made.stdout and "internal error" not in made.stderr
    rows = {line.split()[1]: line for line in made.stdout.splitlines() if line.startswith("│")}
    assert "command line" in rows["fast_augment"] and "False" in rows["fast_augment"]
    assert "engine default" in rows["fused_optimizer"]  # no recipe has it: not labelled "recipe"
    assert "recipe bp4d/fmae" in rows["blr"]
