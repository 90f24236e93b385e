"""A table that holds any number of rows and draws only the ones on screen (Textual's Line API).

DataTable measures and lays out every cell of every row as rows are added; at 10,000 runs that is most of
the app's start-up and memory. Here a row is its key and its cells; a column's width comes from per-width
counts kept as rows come, change and go (so narrowing a cell never re-measures the column), and
`render_line` builds only the lines the terminal shows. Rows can be held without being shown: `set_order`
chooses which keys show and in what order, so filtering and sorting move keys, never cells.

The DataTable calls the app's screens and tests use (`add_column`, `add_row`, `update_cell`, `get_cell`,
`get_row_index`, `move_cursor`, `cursor_row`, `columns`, `ordered_rows`, …) behave as DataTable's do.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, ClassVar, Iterable

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets.data_table import Column, ColumnKey, Row, RowKey

PAD = 1  # blank cells on each side of a column, as DataTable's cell_padding
_HELD = {str, Text}  # what a row's cells are held as (see as_cell)


def as_cell(value: Any) -> str | Text:
    """What a row holds: Text where it is styled, else the plain string (a tenth of a Text's memory)."""
    return value if isinstance(value, (str, Text)) else "-" if value is None else str(value)


def as_text(value: str | Text) -> Text:
    return value if isinstance(value, Text) else Text(value, end="", no_wrap=True)


def width_of(value: str | Text) -> int:
    if isinstance(value, Text):
        return value.cell_len
    return len(value) if value.isascii() else cell_len(value)  # most cells are ASCII: no table lookups


def _widths(column: tuple[str | Text, ...]) -> list[int]:
    """Each cell's width, a column at a time in C: an ASCII column of strings by len, another by its few
    distinct values (strings by value, shared styled cells by identity)."""
    if set(map(type, column)) == {str}:
        if "".join(column).isascii():
            return list(map(len, column))
        known = {value: width_of(value) for value in set(column)}
        return list(map(known.__getitem__, column))
    known = {key: width_of(value) for key, value in dict(zip(map(id, column), column)).items()}
    return list(map(known.__getitem__, map(id, column)))


class VirtualTable(ScrollView, can_focus=True):
    """Rows keyed by strings, a row cursor that belongs to a key, a header that stays on top."""

    BINDINGS: ClassVar = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_top", "First row", show=False),
        Binding("end", "scroll_bottom", "Last row", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"vtable--header", "vtable--cursor", "vtable--even-row",
                                             "vtable--odd-row"}
    # DataTable's look, so the tables that moved here look as they did.
    DEFAULT_CSS = """
    VirtualTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        &:focus {
            background-tint: $foreground 5%;
            & > .vtable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .vtable--header { background-tint: $foreground 5%; }
        }
        &:dark > .vtable--even-row { background: $surface-darken-1 40%; }
        & > .vtable--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .vtable--header { background: ansi_bright_blue; color: ansi_default; }
        & > .vtable--even-row { background: $surface-lighten-1 50%; }
        & > .vtable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    class RowHighlighted(Message):
        """The cursor moved to another row (or another row came under it)."""

        def __init__(self, table: VirtualTable, cursor_row: int, row_key: RowKey) -> None:
            super().__init__()
            self.table, self.cursor_row, self.row_key = table, cursor_row, row_key

        @property
        def control(self) -> VirtualTable:
            return self.table

    class RowSelected(RowHighlighted):
        """Enter (or a click) on a row."""

    class HeaderSelected(Message):
        """A click on a column's header."""

        def __init__(self, table: VirtualTable, column_key: ColumnKey, column_index: int, label: Text) -> None:
            super().__init__()
            self.table, self.column_key, self.column_index, self.label = table, column_key, column_index, label

        @property
        def control(self) -> VirtualTable:
            return self.table

    def __init__(self, *, zebra_stripes: bool = True, **kwargs: Any) -> None:
        kwargs.pop("cursor_type", None)  # always a row cursor
        super().__init__(**kwargs)
        self.zebra_stripes = zebra_stripes
        self.columns: dict[ColumnKey, Column] = {}
        self._keys: list[str] = []  # column keys in order
        self._fixed: dict[int, int] = {}  # column index -> width for live columns (drawn, never counted)
        self._padding: list[tuple[int, int]] = []
        self._rows: dict[str, tuple[str | Text, ...]] = {}  # every row held, shown or not
        self._widths: dict[str, tuple[int, ...]] = {}
        self._counts: list[Counter[int]] = []  # per column: how many held cells have each width
        self._keys_shown: list[str] = []  # keys shown, top to bottom
        self._index: dict[str, int] | None = {}  # key -> row number; None: rebuild when asked
        self._cursor = 0
        self._told: str | None = None  # the key the last RowHighlighted named
        self._lines: dict[tuple, tuple[Strip, Style]] = {}  # full-width lines drawn since the last change
        self._drawn_widths: tuple[int, ...] = ()  # the column widths the kept lines were drawn with
        self.live: Callable[[str, str], str | Text] | None = None  # cells of the `fixed` columns, drawn when shown

    # --- columns ----------------------------------------------------------------------------------------

    def add_column(self, label: str | Text, *, key: str, width: int | None = None,
                   padding: tuple[int, int] = (PAD, PAD)) -> ColumnKey:
        """A column; `width` makes it a live column: its cells come from `live(row key, column key)` as they
        are drawn (for text that changes with the clock), never from the rows."""
        column_key = ColumnKey(key)
        text = label if isinstance(label, Text) else Text(label)
        self.columns[column_key] = Column(column_key, text, text.cell_len, content_width=text.cell_len)
        self._keys.append(key)
        self._padding.append(padding)
        self._counts.append(Counter())
        if width is not None:
            self._fixed[len(self._keys) - 1] = width
        self._changed(layout=True)
        return column_key

    def clear(self, columns: bool = False) -> VirtualTable:
        self._rows.clear()
        self._widths.clear()
        self._keys_shown = []
        self._index = {}
        for counts in self._counts:
            counts.clear()
        if columns:
            self.columns.clear()
            self._keys, self._fixed, self._padding, self._counts = [], {}, [], []
        self._cursor = 0
        self._changed(layout=True)
        return self

    def _column_width(self, i: int) -> int:
        label = self.columns[ColumnKey(self._keys[i])].label.cell_len
        if i in self._fixed:
            return max(label, self._fixed[i])
        counts = self._counts[i]
        return max(label, max(counts) if counts else 0)

    # --- rows held ------------------------------------------------------------------------------------

    def put_rows(self, rows: Iterable[tuple[str, Iterable[Any]]]) -> None:
        """Hold (or replace) rows' cells, shown or not: (key, cells) pairs."""
        pairs = [(key, tuple(cells)) for key, cells in rows]
        keys = [key for key, _ in pairs]
        held, held_widths = self._rows, self._widths
        size = len(pairs[0][1]) if pairs else 0
        if all(len(cells) == size for _, cells in pairs) and len(set(keys)) == len(keys):
            # A column at a time, in C where it can be (100,000 rows at a first look: a pass a cell was
            # most of its cost on the app's thread): an all-ASCII column of strings is measured by len.
            columns = [column if set(map(type, column)) <= _HELD else tuple(map(as_cell, column))
                       for column in zip(*[cells for _, cells in pairs])]
            widths = [_widths(column) for column in columns]
            cell_rows, width_rows = list(zip(*columns)), list(zip(*widths))
            if not held_widths.keys().isdisjoint(keys):
                for key in keys:
                    if key in held_widths:
                        self._forget_widths(key)
            held.update(zip(keys, cell_rows))
            held_widths.update(zip(keys, width_rows))
            for counts, column_widths in zip(self._counts, widths):
                counts.update(column_widths)  # a column's widths counted in C, not one += a cell
        else:  # rows of different lengths (DataTable's add_row takes any), or a key twice: a row at a time
            for key, cells in pairs:
                row = tuple(as_cell(c) for c in cells)
                if key in held_widths:
                    self._forget_widths(key)
                held[key], held_widths[key] = row, tuple(map(width_of, row))
                for counts, w in zip(self._counts, held_widths[key]):
                    counts[w] += 1
        self._changed(rows=keys)

    def put_row(self, key: str, cells: Iterable[Any]) -> None:
        self.put_rows([(key, cells)])

    def drop_rows(self, keys: Iterable[str]) -> None:
        """Forget rows, and take them off the screen."""
        gone = {key for key in keys if key in self._rows}
        if not gone:
            return
        for key in gone:
            self._forget_widths(key)
            del self._rows[key], self._widths[key]
        if gone & set(self.index_of):
            self.set_order([k for k in self._keys_shown if k not in gone])
        self._changed()

    def _forget_widths(self, key: str) -> None:
        for counts, w in zip(self._counts, self._widths.get(key, ())):
            counts[w] -= 1
            if not counts[w]:
                del counts[w]

    def set_order(self, keys: list[str]) -> None:
        """Show these held rows, in this order. The cursor stays on its row's key when that row is still
        shown; otherwise it keeps its place (the row that took it)."""
        before = self.cursor_key
        self._keys_shown = list(keys)
        self._index = None  # made when asked: a first look's parts set the order ~17 times at 100,000 runs
        if before is not None:
            try:
                self._cursor = self._keys_shown.index(before)  # one scan in C, not a dict of every key
            except ValueError:
                pass
        self._cursor = max(0, min(self._cursor, len(self._keys_shown) - 1))
        self._changed(rows=())  # a line is drawn per (row, stripe or cursor): moving rows keeps them
        self._scroll_to_cursor()

    @property
    def index_of(self) -> dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self._keys_shown)}
        return self._index

    # --- DataTable's calls ------------------------------------------------------------------------------

    def add_row(self, *cells: Any, key: str) -> RowKey:
        self.put_row(key, cells)
        if key not in self.index_of:
            self._keys_shown.append(key)
            self.index_of[key] = len(self._keys_shown) - 1
            self._changed()
        return RowKey(key)

    def remove_row(self, key: str | RowKey) -> None:
        self.drop_rows([key.value if isinstance(key, RowKey) else key])

    def update_cell(self, key: str | RowKey, column: str | ColumnKey, value: Any, *, update_width: bool = False) -> None:
        """A new cell; the column's width follows it (`update_width` is accepted for DataTable's callers)."""
        key = key.value if isinstance(key, RowKey) else key
        column = column.value if isinstance(column, ColumnKey) else column
        row = list(self._rows[key])
        row[self._keys.index(column)] = value
        self.put_row(key, row)

    def get_cell(self, key: str | RowKey, column: str | ColumnKey) -> str | Text:
        key = key.value if isinstance(key, RowKey) else key
        column = column.value if isinstance(column, ColumnKey) else column
        i = self._keys.index(column)
        if i in self._fixed and self.live is not None:
            return self.live(key, column)
        return self._rows[key][i]

    def get_row(self, key: str | RowKey) -> list[str | Text]:
        key = key.value if isinstance(key, RowKey) else key
        return [self.get_cell(key, c) for c in self._keys]

    def get_row_at(self, index: int) -> list[str | Text]:
        return self.get_row(self._keys_shown[index])

    def get_row_index(self, key: str | RowKey) -> int:
        return self.index_of[key.value if isinstance(key, RowKey) else key]

    def is_valid_row_index(self, index: int) -> bool:
        return 0 <= index < len(self._keys_shown)

    @property
    def row_count(self) -> int:
        return len(self._keys_shown)

    @property
    def row_keys(self) -> list[str]:
        """Keys of the rows shown, top to bottom."""
        return list(self._keys_shown)

    @property
    def ordered_rows(self) -> list[Row]:
        return [Row(RowKey(k), 1) for k in self._keys_shown]

    @property
    def rows(self) -> dict[RowKey, Row]:
        """The rows shown, by key (DataTable's `rows`)."""
        return {row.key: row for row in self.ordered_rows}

    # --- the cursor -------------------------------------------------------------------------------------

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def cursor_key(self) -> str | None:
        return self._keys_shown[self._cursor] if self._keys_shown else None

    def move_cursor(self, *, row: int | None = None, column: int | None = None, animate: bool = False,
                    scroll: bool = True) -> None:
        if row is None or not self._keys_shown:
            return
        before = self.cursor_key
        self._cursor = max(0, min(row, len(self._keys_shown) - 1))
        for key in (before, self.cursor_key):
            self._lines.pop((key, "vtable--cursor"), None)
        self.refresh()
        if scroll:
            self._scroll_to_cursor()
        self._tell()

    @property
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)  # less the header

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self._cursor - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self._cursor + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self._cursor - self._page)

    def action_page_down(self) -> None:
        self.move_cursor(row=self._cursor + self._page)

    def action_scroll_top(self) -> None:
        self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        self.move_cursor(row=len(self._keys_shown) - 1)

    def action_select_cursor(self) -> None:
        if self._keys_shown:
            self.post_message(self.RowSelected(self, self._cursor, RowKey(self._keys_shown[self._cursor])))

    def _scroll_to_cursor(self) -> None:
        page, top = self._page, round(self.scroll_y)
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False)
        elif self._cursor >= top + page:
            self.scroll_to(y=self._cursor - page + 1, animate=False)

    def _tell(self) -> None:
        """RowHighlighted when the row under the cursor is another than the last one told."""
        key = self.cursor_key
        if key != self._told:
            self._told = key
            if key is not None:
                self.post_message(self.RowHighlighted(self, self._cursor, RowKey(key)))

    async def _on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x = offset.x + round(self.scroll_x)
        if offset.y == 0:
            left = 0
            for i, key in enumerate(self._keys):
                pad = self._padding[i]
                left += pad[0] + self._column_width(i) + pad[1]
                if x < left:
                    column = self.columns[ColumnKey(key)]
                    self.post_message(self.HeaderSelected(self, column.key, i, column.label))
                    return
            return
        row = round(self.scroll_y) + offset.y - 1
        if self.is_valid_row_index(row):
            self.move_cursor(row=row)
            self.action_select_cursor()

    # --- drawing ----------------------------------------------------------------------------------------

    def _changed(self, layout: bool = False, rows: Iterable[str] | None = None) -> None:
        """After any change: the size, the cursor, and the drawn lines to forget — those of `rows` when
        the columns kept their widths (a part of 500 new runs redraws nothing already drawn), else all."""
        widths = tuple(self._column_width(i) for i in range(len(self._keys)))
        if rows is None or layout or widths != self._drawn_widths:
            self._lines.clear()
            self._drawn_widths = widths
        elif self._lines:  # a screenful of lines kept, a part of up to 8,000 rows: look the lines up
            keys = rows if isinstance(rows, (set, dict)) else set(rows)
            for line in [line for line in self._lines if line[0] in keys]:
                del self._lines[line]
        width = sum(p[0] + w + p[1] for w, p in zip(widths, self._padding))
        size = Size(width, len(self._keys_shown) + 1)  # + the header
        if size != self.virtual_size:
            self.virtual_size = size
        if self._cursor >= len(self._keys_shown):
            self._cursor = max(0, len(self._keys_shown) - 1)
        self.refresh(layout=layout)
        if self.is_mounted:
            self._tell()

    def refresh_live(self) -> None:
        """Draw the live columns again (their text moved with the clock)."""
        self._lines.clear()
        self.refresh()

    def on_resize(self) -> None:
        self._lines.clear()
        self._scroll_to_cursor()

    def on_focus(self) -> None:
        self._lines.clear()

    def on_blur(self) -> None:
        self._lines.clear()

    def notify_style_update(self) -> None:
        self._lines.clear()
        super().notify_style_update()

    def _line(self, cells: list[str | Text], style: Style, key: str | None) -> Strip:
        segments: list[Segment] = []
        for i, value in enumerate(cells):
            width = self._column_width(i)
            if i in self._fixed and key is not None and self.live is not None:
                value = self.live(key, self._keys[i])
            cell = as_text(value)
            if cell.cell_len > width:
                cell = cell.copy()
                cell.truncate(width, overflow="ellipsis")
            left, right = self._padding[i]
            segments.append(Segment(" " * left, style))
            segments.extend(Segment(text, style + s if s else style)
                            for text, s, _ in cell.render(self.app.console) if text and text != "\n")
            segments.append(Segment(" " * (width - cell.cell_len + right), style))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        if y == 0:
            key: tuple = ("header",)
            if key not in self._lines:
                style = base + self.get_component_rich_style("vtable--header")
                labels = [self.columns[ColumnKey(k)].label for k in self._keys]
                self._lines[key] = (self._line(labels, style, None), style)
        else:
            row = round(self.scroll_y) + y - 1
            if row >= len(self._keys_shown):
                return Strip.blank(width, base)
            name = self._keys_shown[row]
            # DataTable's stripes: the first row is an "even" one
            kind = ("vtable--cursor" if row == self._cursor else
                    "vtable--odd-row" if row % 2 or not self.zebra_stripes else "vtable--even-row")
            key = (name, kind)
            if key not in self._lines:
                style = base + self.get_component_rich_style(kind)
                self._lines[key] = (self._line(self._rows[name], style, name), style)
        strip, style = self._lines[key]
        x = round(self.scroll_x)
        return strip.crop(x, x + width).extend_cell_length(width, style)
