"""The app, driven as a person would: built by `create_app` (as `fmae-tui` builds it), keys pressed with
Pilot, assertions on what the screen shows, the notifications it raised and what landed on disk."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.widgets import DataTable

from fmae.config import default_config_text, update_config
from fmae.registry import DATASETS
from fmae_tui.app import create_app
from fmae_tui.screens import datasets
from fmae_tui.screens.help import HelpScreen
from tui_support import screen_text, squash, wait_until

BIN = Path(sys.executable).parent
TINY = "synthetic = { subjects = 5, frames = 4, size = 48, seed = 0 }"
EXPECTED_STATUS = {
    "bp4d": "synthetic · not generated",
    "bp4d_plus": "synthetic · not generated",
    "disfa": "present",
    "rafdb": "missing",
    "affectnet8": "synthetic · not generated",
    "affectnet7": "not configured",
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The default fmae.toml with tiny synthetic sizes, plus one real-but-present, one missing and one
    unconfigured dataset, so every status appears."""
    path = tmp_path / "fmae.toml"
    path.write_text(re.sub(r"synthetic = \{[^}]*\}", TINY, default_config_text()), encoding="utf-8")
    (tmp_path / "real" / "disfa").mkdir(parents=True)
    update_config(path, {
        "datasets.disfa.synthetic": None, "datasets.disfa.labels": None, "datasets.disfa.root": "real/disfa",
        "datasets.rafdb.synthetic": None, "datasets.rafdb.root": "real/rafdb",
        "datasets.affectnet7": None,
    })
    return path


def notifications(messages: list[Message]) -> list[Notification]:
    return [m.notification for m in messages if isinstance(m, Notify)]


async def test_table_lists_every_dataset_with_its_status(config: Path) -> None:
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one(DataTable)
        assert [str(key.value) for key in table.rows] == list(DATASETS)
        for name, status in EXPECTED_STATUS.items():
            assert str(table.get_cell(name, "status")) == status
        text = screen_text(app)
        assert squash(f"config {config} runs {config.parent / 'runs'} (not created yet)") in squash(text)
        for name, status in EXPECTED_STATUS.items():
            assert re.search(rf"^ {name} .* {re.escape(status)}\s*$", text, re.M), (name, text)
        assert "12 AUs" in text and "8 classes" in text
        for key in ("g Generate", "d Details", "r Refresh", "? Help", "q Quit"):
            assert key in text
        await pilot.press("q")
    assert app.return_code == 0


async def test_root_column_appears_when_it_fits(config: Path) -> None:
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert "root" not in [str(c.label) for c in app.screen.query_one(DataTable).columns.values()]
        assert squash(f"bp4d root {config.parent / 'data/synth/bp4d'}") in squash(screen_text(app))
        await pilot.resize_terminal(200, 50)
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        assert str(table.get_cell("bp4d_plus", "root")) == "data/synth/bp4d_plus"
        assert str(table.get_cell("affectnet7", "root")) == "-"


async def test_generate_makes_the_synthetic_copy_in_a_worker(config: Path) -> None:
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("g")  # the cursor starts on bp4d
        await app.workers.wait_for_complete()
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        assert str(table.get_cell("bp4d", "status")) == "synthetic · ready"
        assert re.search(r"^ bp4d .* synthetic · ready", screen_text(app), re.M)
        root = config.parent / "data" / "synth" / "bp4d"
        assert (root / "labels.jsonl").is_file() and (root / "synth.json").is_file()
        said = [n.message for n in notifications(seen)]
        assert said[0] == f"generating synthetic BP4D data in {root}"
        assert said[-1] == f"bp4d: synthetic data ready in {root}"

        await pilot.press("g")  # already there: says so, starts nothing
        await pilot.pause()
        assert notifications(seen)[-1].message.startswith("bp4d: synthetic data is already generated")
        assert not list(app.workers)


async def test_leaving_the_datasets_screen_while_it_generates_still_says_when_data_is_ready(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # esc during generation pops the screen: its worker's message went nowhere and the app stayed
    # "generating" (q asked twice) for good.
    import time

    real = datasets.ensure_dataset

    def slow(*args):
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(datasets, "ensure_dataset", slow)
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("g", "escape")  # the cursor starts on bp4d; esc: to the Runs screen
        assert not isinstance(app.screen, datasets.DatasetsScreen) and app.generating == {"bp4d"}
        await wait_until(pilot, lambda: not app.generating, what="the data made")
        await pilot.pause()
        root = config.parent / "data" / "synth" / "bp4d"
        assert notifications(seen)[-1].message == f"bp4d: synthetic data ready in {root}"


async def test_an_outdated_synthetic_copy_says_so_and_is_made_again(config: Path) -> None:
    """A copy an older fmae wrote is there but not what training reads: not "not generated"."""
    import json

    from fmae.config import load_project
    from fmae.data.locate import ensure_dataset

    project = load_project(config)
    loc = ensure_dataset(DATASETS["bp4d"], project.dataset("bp4d"))  # made by this fmae…
    meta = json.loads((loc.root / "synth.json").read_text())
    del meta["generator"]  # …then as generator 1 wrote it (before versions were recorded)
    (loc.root / "synth.json").write_text(json.dumps(meta))
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one(DataTable)
        assert str(table.get_cell("bp4d", "status")) == "synthetic · outdated"
        assert squash("synthetic outdated (made by an older fmae): regenerated on first use") in squash(screen_text(app))
        await pilot.press("d")
        assert "regenerated on first use" in screen_text(app)
        await pilot.press("g")  # the cursor starts on bp4d
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert str(table.get_cell("bp4d", "status")) == "synthetic · ready"
        assert json.loads((loc.root / "synth.json").read_text())["generator"]["version"] == 2
        assert "regenerated on first use" not in screen_text(app)


async def test_quit_while_generating_needs_a_second_press(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = datasets.ensure_dataset

    def held(spec, loc):
        release.wait(10)
        return real(spec, loc)

    monkeypatch.setattr(datasets, "ensure_dataset", held)
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("g", "down")  # the UI answers while the worker runs
        assert str(app.screen.query_one(DataTable).get_cell("bp4d", "status")) == "synthetic · generating…"
        assert app.screen.query_one(DataTable).cursor_row == 1
        await pilot.press("q")
        assert app.return_code is None
        last = notifications(seen)[-1]
        assert last.severity == "warning" and "still generating bp4d: press q again" in last.message
        await pilot.press("q")
        assert app.return_code == 0 and app.generating == {"bp4d"}  # main() reports it and leaves
        release.set()


async def test_generate_explains_why_nothing_happens(config: Path) -> None:
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("down", "down", "g")  # disfa: real data
        await pilot.pause()
        assert notifications(seen)[-1].message == "disfa is real data, not synthetic: nothing to generate"
        await pilot.press("ctrl+end", "g")  # affectnet7: not configured
        await pilot.pause()
        assert notifications(seen)[-1].message == "affectnet7 has no root configured: nothing to generate"
        assert {n.severity for n in notifications(seen)} == {"warning"}
        assert not (config.parent / "data").exists()


async def test_generation_failure_is_an_error_notification(config: Path) -> None:
    update_config(config, {"datasets.bp4d.synthetic": {"subjects": 2, "frames": 4, "size": 48, "seed": 0}})
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await pilot.press("g")
        await app.workers.wait_for_complete()
        await pilot.pause()
        last = notifications(seen)[-1]
        assert last.severity == "error" and "needs at least 4 subjects" in last.message
        assert str(app.screen.query_one(DataTable).get_cell("bp4d", "status")) == "synthetic · not generated"


async def test_details_show_labels_and_folds(config: Path) -> None:
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert "AU1 AU2 AU4" not in screen_text(app)
        await pilot.press("d")
        text = screen_text(app)
        assert "AUs (12)    AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU14 AU15 AU17 AU23 AU24" in text
        assert "fold 1: 14 · fold 2: 14 · fold 3: 13" in text
        assert squash(f"labels {config.parent / 'data/synth/bp4d/labels.jsonl'}") in squash(text)
        await pilot.press("down", "down", "down")  # the pane follows the cursor: rafdb
        text = screen_text(app)
        assert "Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral" in text
        assert "AU1 AU2 AU4" not in text
        await pilot.press("d")
        assert "Surprise, Fear" not in screen_text(app)


async def test_help_lists_every_key(config: Path) -> None:
    app = create_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for key, what in (("g", "Generate"), ("d", "Details"), ("r", "Refresh"), ("?", "Help"),
                          ("q, ^q", "Quit"), ("^p", "Palette")):
            assert re.search(rf"│ {re.escape(key)} +{what} ", text), (key, text)
        assert "↑ cursor up" in text and "⏎ select" in text and "^end bottom" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_refresh_rereads_the_config_and_keeps_it_when_broken(config: Path) -> None:
    seen: list[Message] = []
    app = create_app(config)
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        (config.parent / "real" / "rafdb").mkdir()
        await pilot.press("r")
        assert str(app.screen.query_one(DataTable).get_cell("rafdb", "status")) == "present"
        config.write_text(config.read_text() + "\n[nonsense]\n", encoding="utf-8")
        await pilot.press("r")
        last = notifications(seen)[-1]
        assert last.severity == "error" and "unknown section [nonsense]" in last.message
        assert str(app.screen.query_one(DataTable).get_cell("rafdb", "status")) == "present"


def test_bad_config_exits_2_with_one_line() -> None:
    done = subprocess.run([BIN / "fmae-tui", "--config", "/nonexistent"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "error: --config: config file /nonexistent does not exist\n"


def test_app_never_imports_torch(config: Path) -> None:
    """A fresh interpreter (pytest's may hold torch from other tests): start, generate data, leave."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from fmae_tui.app import create_app

        async def main():
            app = create_app(Path({str(config)!r}))
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.press("d", "question_mark", "escape", "g")
                await app.workers.wait_for_complete()
                # Launch (its preview resolves configs and reads the GPU plan), Queue, GPUs
                await pilot.press("l")
                await pilot.pause(1.0)
                await app.workers.wait_for_complete()
                await pilot.press("escape", "j")
                await pilot.pause(0.5)
                await pilot.press("escape", "g")
                await pilot.pause(0.5)
                await app.workers.wait_for_complete()
                assert type(app.screen).__name__ == "GpusScreen", app.screen
        asyncio.run(main())
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert (config.parent / "data" / "synth" / "bp4d" / "synth.json").is_file()
