"""The Datasets screen: every benchmark in the registry, where fmae.toml puts it, and whether it is there;
generates configured synthetic copies in a worker thread."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.events import Resize
from textual.widgets import DataTable, Footer, Header, Static

from fmae.config import DatasetLocation
from fmae.data.locate import ensure_dataset, synth_generator, synthetic_changes, synthetic_ready
from fmae.data.synth import GENERATOR_VERSION
from fmae.registry import DATASETS, DatasetSpec
from fmae_tui.screens.base import FmaeScreen, WorkEnded

COLUMNS = ("name", "task", "labels", "subjects", "folds", "root", "status")
MIN_ROOT_WIDTH = 12  # narrower than this, the root column is dropped (the line under the table has it)
GENERATING = "synthetic · generating…"
OUTDATED = "synthetic · outdated"
OUTDATED_NOTE = "outdated (made by an older fmae): regenerated on first use"

# Status words carry the meaning; colour only repeats it (readable with 16 colours or none).
_STATUS_STYLE = {
    "present": "green",
    "synthetic · ready": "green",
    "synthetic · not generated": "yellow",
    OUTDATED: "yellow",
    GENERATING: "yellow",
    "missing": "bold red",
    "not configured": "",
}
STATUS_WIDTH = max(cell_len(status) for status in _STATUS_STYLE)  # fixed, so rows never jump


def dataset_status(loc: DatasetLocation) -> str:
    if loc.root is None:
        return "not configured"
    if loc.synthetic is not None:
        if synthetic_ready(loc):
            return "synthetic · ready"
        return OUTDATED if synthetic_outdated(loc) else "synthetic · not generated"
    return "present" if loc.root.is_dir() else "missing"


def synthetic_outdated(loc: DatasetLocation) -> bool:
    """A complete synthetic copy by an older generator or with other settings than fmae.toml's: there, but
    `ensure_dataset` makes it again."""
    old = synth_generator(loc.root) if loc.root is not None else None
    return old is not None and (old < GENERATOR_VERSION or bool(synthetic_changes(loc)))


def outdated_note(loc: DatasetLocation) -> str:
    changes = synthetic_changes(loc)
    return f"outdated (settings changed: {', '.join(changes)}): regenerated on first use" if changes else OUTDATED_NOTE


def show_path(path: Path | None, base: Path) -> str:
    """Relative to the config's folder when inside it, `~/…` under the home folder, else absolute."""
    if path is None:
        return "-"
    for anchor, prefix in ((base, ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.relative_to(anchor))
        except ValueError:
            continue
    return str(path)


def _key_values(rows: list[tuple[str, str]]) -> Table:
    """Bold keys beside values; a long value (a path) folds under itself instead of being cut."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, Text(value))
    return grid


class DatasetsScreen(FmaeScreen):
    SUB_TITLE = "Datasets"
    BINDINGS = [
        Binding("g", "generate", "Generate",
                tooltip="Make the selected dataset's configured synthetic data"),
        Binding("d", "details", "Details", tooltip="Show or hide the selected dataset's details (also ⏎)"),
        Binding("r", "refresh", "Refresh", tooltip="Re-read fmae.toml and look at the disk again"),
        Binding("l", "launch", "Launch", tooltip="Queue runs of the selected dataset (its synthetic copy is made "
                "on first use)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._root_width: int | None = None  # None: no root column at this width
        self._built = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="info")
        yield DataTable(id="datasets", cursor_type="row", zebra_stripes=True)
        yield Static(id="selected-root")
        with VerticalScroll(id="detail"):
            yield Static(id="detail-body")
        yield Footer(show_command_palette=False)  # ^p still works; 80 columns need the room

    def on_mount(self) -> None:
        self._show_info()
        self._root_width = self._fit_root(self.app.size.width)
        self._build_table()
        self.query_one(DataTable).focus()

    def on_resize(self, event: Resize) -> None:
        width = self._fit_root(event.size.width)
        if width != self._root_width:
            self._root_width = width
            self._build_table()

    # --- table ----------------------------------------------------------------------------------------

    def _cells(self, spec: DatasetSpec) -> dict[str, str | Text]:
        loc = self.project.dataset(spec.name)
        status = GENERATING if spec.name in self.fmae.generating else dataset_status(loc)
        count = len(spec.au_codes) if spec.task == "au" else len(spec.classes)
        return {
            "name": spec.name,
            "task": spec.task.upper(),
            "labels": f"{count} AUs" if spec.task == "au" else f"{count} classes",
            "subjects": str(len(spec.subjects) or "-"),
            "folds": str(spec.num_folds or "-"),
            "root": show_path(loc.root, self.project.base_dir),
            "status": Text(status, style=_STATUS_STYLE.get(status, "")),
        }

    def _fit_root(self, screen_width: int) -> int | None:
        """The root column's width: the longest root when it fits, what is left when that is enough."""
        rows = [self._cells(spec) for spec in DATASETS.values()]
        widths = {col: max([cell_len(col)] + [cell_len(str(row[col])) for row in rows]) for col in COLUMNS}
        widths["status"] = STATUS_WIDTH
        padding = 2 * len(COLUMNS) + 1  # one cell of padding each side, one spare for a scrollbar
        left = screen_width - padding - sum(w for col, w in widths.items() if col != "root")
        if left >= widths["root"]:
            return widths["root"]
        return left if left >= MIN_ROOT_WIDTH else None

    def _build_table(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row if self._built else 0
        table.clear(columns=True)
        for col in COLUMNS:
            if col == "root":
                if self._root_width is not None:
                    table.add_column(col, key=col, width=self._root_width)
            elif col == "status":
                table.add_column(col, key=col, width=STATUS_WIDTH)
            else:
                table.add_column(col, key=col)
        for spec in DATASETS.values():
            table.add_row(*self._row(spec).values(), key=spec.name)
        self._built = True
        table.move_cursor(row=min(cursor, table.row_count - 1))
        self._show_selected()

    def _row(self, spec: DatasetSpec) -> dict[str, str | Text]:
        """The cells of the columns on screen now, the root cut from the left when it must be."""
        cells = self._cells(spec)
        if self._root_width is None:
            del cells["root"]
        elif cell_len(str(cells["root"])) > self._root_width:
            cells["root"] = "…" + str(cells["root"])[-(self._root_width - 1):]
        return cells

    def _refresh_row(self, name: str) -> None:
        table = self.query_one(DataTable)
        for col, value in self._row(DATASETS[name]).items():
            table.update_cell(name, col, value)
        if self._selected().name == name:
            self._show_selected()

    def _selected(self) -> DatasetSpec:
        table = self.query_one(DataTable)
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return DATASETS[cast(str, row_key.value)]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self._show_detail(True)

    # --- text beside the table ------------------------------------------------------------------------

    def _show_info(self) -> None:
        project = self.project
        runs = str(project.runs_dir) + ("" if project.runs_dir.is_dir() else " (not created yet)")
        config = project.label if project.path else "built-in defaults (no fmae.toml here or above; `fmae init` writes one)"
        rows = [("config", config), ("runs", runs)]
        if not _any_run(project.runs_dir):
            rows.append(("start", "press l to launch runs on the selected benchmark"))
        self.query_one("#info", Static).update(_key_values(rows))

    def _show_selected(self) -> None:
        if not self._built:
            return
        spec = self._selected()
        loc = self.project.dataset(spec.name)
        config = self.project.path.name if self.project.path else "fmae.toml (`fmae init` writes one)"
        root = str(loc.root) if loc.root else f"not configured: add [datasets.{spec.name}] root to {config}"
        rows = [(f"{spec.name} root", root)]
        if loc.synthetic is not None and synthetic_outdated(loc):
            rows.append(("synthetic", outdated_note(loc)))
        self.query_one("#selected-root", Static).update(_key_values(rows))
        if self.query_one("#detail").has_class("-shown"):
            self.query_one("#detail-body", Static).update(self._details(spec, loc))

    def _details(self, spec: DatasetSpec, loc: DatasetLocation) -> Table:
        grid = _key_values([])
        kind = "AU detection" if spec.task == "au" else "expression recognition (FER)"
        grid.add_row("dataset", Text(f"{spec.title} ({spec.name}) · {kind}"))
        if spec.task == "au":
            grid.add_row(f"AUs ({len(spec.au_codes)})", Text(" ".join(spec.au_names())))
            sizes = " · ".join(f"fold {k}: {len(fold)}" for k, fold in enumerate(spec.folds, start=1))
            grid.add_row("folds", Text(f"{sizes} test subjects"))
        else:
            grid.add_row(f"classes ({len(spec.classes)})", Text(", ".join(spec.classes)))
            if spec.skip_classes:
                grid.add_row("skipped", Text(f"class folders named {' or '.join(spec.skip_classes)} are left out"))
            grid.add_row("splits", Text("root/train and root/test, one folder per class (name or id)"
                                        + ("; the test split is class-balanced" if spec.balanced_test else "")))
        grid.add_row("root", Text(str(loc.root) if loc.root else "not configured"))
        if loc.labels:
            grid.add_row("labels", Text(str(loc.labels)))
        if loc.train_labels:
            grid.add_row("train labels", Text(loc.train_labels))
            grid.add_row("test labels", Text(str(loc.test_labels)))
        if spec.task == "au" and loc.root is not None and not (loc.labels or loc.train_labels):
            grid.add_row("labels", Text("not configured: set labels (or train_labels and test_labels)"))
        if loc.synthetic is not None:
            s = loc.synthetic
            unit = ("subjects", "frames each") if spec.task == "au" else ("identities", "images each")
            who = f"{s.subjects} {unit[0]}" if s.subjects is not None else f"all {unit[0]}"
            grid.add_row("synthetic", Text(f"{who}, {s.frames} {unit[1]}, {s.size} px, seed {s.seed}, "
                                           f"identity {s.identity_strength:g}, nuisance {s.nuisance:g}"
                                           + (f"; {outdated_note(loc)}" if synthetic_outdated(loc) else "")))
        if loc.root is not None:  # the config's path is in the header: name the file, not the path
            path = self.project.path
            grid.add_row("configured", Text(loc.origin.replace(str(path), path.name) if path else loc.origin))
        if spec.notes:
            grid.add_row("notes", Text(spec.notes))
        return grid

    # --- actions --------------------------------------------------------------------------------------

    def action_launch(self) -> None:
        from fmae_tui.screens.launch import LaunchScreen

        self.app.switch_screen(LaunchScreen(self._selected().name))

    def action_details(self) -> None:
        self._show_detail(not self.query_one("#detail").has_class("-shown"))

    def _show_detail(self, shown: bool) -> None:
        """The detail pane repeats the root line, so only one of the two is on screen."""
        self.query_one("#detail").set_class(shown, "-shown")
        self.query_one("#selected-root").set_class(shown, "-hidden")
        self._show_selected()

    def action_refresh(self) -> None:
        if self.fmae.reload_project():
            self.notify(f"reloaded {self.project.label}", markup=False)
        self._show_info()
        self._root_width = self._fit_root(self.size.width)
        self._build_table()

    def action_generate(self) -> None:
        spec = self._selected()
        loc = self.project.dataset(spec.name)
        if spec.name in self.fmae.generating:
            self.notify(f"{spec.name}: already generating", severity="warning")
            return
        if loc.synthetic is None:
            why = "has no root configured" if loc.root is None else "is real data, not synthetic"
            self.notify(f"{spec.name} {why}: nothing to generate", severity="warning")
            return
        if synthetic_ready(loc):
            self.notify(f"{spec.name}: synthetic data is already generated in {loc.root}", markup=False)
            return
        self.fmae.generating.add(spec.name)
        self._refresh_row(spec.name)
        self.notify(f"generating synthetic {spec.title} data in {loc.root}", markup=False)
        self._generate(spec, loc)

    class Generated(WorkEnded):
        """Generating a synthetic copy ended; `context` is (the dataset's spec, its location)."""

    def _generate(self, spec: DatasetSpec, loc: DatasetLocation) -> None:
        # a full disk or a bug must not take the app down: the message says what happened
        app = self.fmae

        def left(result: object, error: str | None) -> None:  # the user went on meanwhile: still say it
            app.generating.discard(spec.name)
            app.notify(error or f"{spec.name}: synthetic data ready in {loc.root}", markup=False,
                       title=f"{spec.name}: generation failed" if error else "", severity="error" if error else "information")

        self.in_thread(lambda: ensure_dataset(spec, loc), self.Generated, group="generate", context=(spec, loc),
                       left=left)

    def on_datasets_screen_generated(self, message: Generated) -> None:
        spec, loc = message.context
        self._generated(spec, loc, message.error)

    def _generated(self, spec: DatasetSpec, loc: DatasetLocation, error: str | None) -> None:
        self.fmae.generating.discard(spec.name)
        if error is None:
            self.notify(f"{spec.name}: synthetic data ready in {loc.root}", markup=False)
        else:
            self.notify(error, title=f"{spec.name}: generation failed", severity="error", markup=False,
                        timeout=15)
        self._refresh_row(spec.name)


def _any_run(runs_dir) -> bool:
    try:
        return any(p.is_dir() and not p.name.startswith(".") for p in runs_dir.iterdir())
    except OSError:
        return False
