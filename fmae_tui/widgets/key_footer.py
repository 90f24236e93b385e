"""Textual's Footer, made again only when the keys it shows change.

Textual's Footer recomposes (removes its keys, mounts and styles new ones) after every
`refresh_bindings`, and a screen's start publishes several: the stack changing, the focus moving, the
screen's own bar. Each costs ~10 ms of the first paint; most show the same keys again. This one makes its
keys again once per refresh, and only when what they show (key, label, enabled, tooltip) moved."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._pending = False  # a look at the bindings is scheduled after the next refresh
        self._shown: tuple | None = None  # what the keys show now (None: not composed yet)

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if self._pending or not screen.app.app_focus or not (self.is_attached and screen is self.screen):
            return
        self._pending = True
        self.call_after_refresh(self._recompose_if_moved)

    def _keys(self) -> tuple:
        app = self.app
        keys = tuple((b.key, app.get_key_display(b), b.description, b.action, b.group, enabled, tooltip)
                     for _, b, enabled, tooltip in self.screen.active_bindings.values() if b.show)
        palette = self.screen.active_bindings.get(app.COMMAND_PALETTE_BINDING)
        shown = self.show_command_palette and app.ENABLE_COMMAND_PALETTE and palette is not None
        return keys, shown and (app.get_key_display(palette[1]), palette[2])

    async def _recompose_if_moved(self) -> None:
        self._pending = False
        if not self.is_attached:
            return
        keys = self._keys()
        if keys != self._shown:
            self._shown = keys
            await self.recompose()
