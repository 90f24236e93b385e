"""The typed run config: sections, their one default each, the experiment key, run.toml's layout."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fmae.config import load_project
from fmae.errors import FmaeError
from fmae.run_config import create_run, resolve_run_config
from fmae.run_spec import HOW_KEYS, RunSpec, choices, config_key, flatten, sectioned
from fmae.runs import RunDir

OLD_AU = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "20261202-002439-bp4d-f1-s0-l0-vit_tiny-fa52"


def _resolved(tmp_path: Path, **cli):
    (tmp_path / "labels.jsonl").write_text("")
    return resolve_run_config(load_project(cwd=tmp_path), "bp4d", fold=1, root=tmp_path, generate=False,
                              labels=tmp_path / "labels.jsonl", cli={"model": "vit_tiny", **cli})


def test_how_keys_are_the_execution_keys_of_the_release_before(tmp_path):
    # Any change here changes every experiment key: queued and done cells would be queued again.
    assert HOW_KEYS == {"device", "amp", "num_workers", "log_every", "compile", "save_best", "data_root", "labels",
                        "train_labels", "test_labels", "data_cache", "fused_attn", "fused_optimizer",
                        "fast_augment", "max_image_pixels"}
    assert choices("amp") == ("auto", "bf16", "fp16", "off") and choices("blr") is None
    with pytest.raises(FmaeError, match="amp = 'fp8': choose one of auto, bf16, fp16, off"):
        _resolved(tmp_path, amp="fp8")


def test_an_old_flat_run_toml_keeps_its_key_without_the_retired_global_pool(tmp_path):
    old = RunDir(OLD_AU).read_config()
    assert old["global_pool"] is True and "global_pool" not in _resolved(tmp_path).values
    assert config_key(old) == config_key({k: v for k, v in old.items() if k != "global_pool"})
    spec = RunSpec.from_flat(old)
    assert (spec.identity.fold, spec.optim.blr, spec.augment.input_size, spec.schedule.accum_iter) == (1, 2e-4, 32, 1)
    assert spec.extra == {"global_pool": True}


def test_run_toml_is_written_in_sections_with_dotted_sources_and_reads_back_flat(tmp_path):
    resolved = _resolved(tmp_path, epochs=1)
    assert resolved.sources["input_size"] == "model vit_tiny" and resolved.values["input_size"] == 64
    assert resolved.sources["warmup_epochs"] == "recipe bp4d/fmae (capped at epochs = 1)"
    assert resolved.sources["clip_grad"] == "engine default"
    run = create_run(tmp_path / "runs", resolved)
    doc = tomllib.loads(run.run_toml.read_text())
    assert list(doc["config"]) == ["identity", "model", "optim", "schedule", "augment", "data", "execution"]
    assert doc["config"]["optim"]["blr"] == 2e-4 and doc["config"]["model"]["model"] == "vit_tiny"
    assert doc["provenance"]["set_by"]["augment.input_size"] == "model vit_tiny"
    assert run.read_config() == flatten(doc["config"]) == resolved.values
    assert config_key(sectioned(resolved.values)) == config_key(resolved.values)
