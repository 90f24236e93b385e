"""What every fmae screen shares: the app it belongs to (`fmae`, with the project config in force), and
`in_thread`, which runs a function in a thread worker and posts what it came to as a message.

Reading the disk, the queue or NVML must not stall the UI thread; a worker that patched widgets itself
would need the UI thread (`call_from_thread`) and its own try/except in every screen. Instead the worker
posts a `WorkEnded` subclass nested on the screen and named for what happened (`RunsScreen.Scanned`,
`QueueScreen.Listed`), as Textual apps such as posting and harlequin post their workers' results; the
handler (`on_runs_screen_scanned`) runs on the UI thread and says an error where the screen says it."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, cast

from textual.message import Message
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.worker import Worker, get_current_worker

from fmae.errors import FmaeError

if TYPE_CHECKING:
    from fmae.config import ProjectConfig
    from fmae_tui.app import FmaeApp


class WorkEnded(Message):
    """A function run in a thread worker ended: its `result`, or the one-line `error` it raised (then
    `result` is None). `context` is what the caller handed along (what the work was about)."""

    def __init__(self, result: Any = None, error: str | None = None, context: Any = None) -> None:
        super().__init__()
        self.result = result
        self.error = error
        self.context = context


def error_line(e: BaseException, plain: tuple[type[BaseException], ...] = (FmaeError,)) -> str:
    """An exception as one line: a user's mistake (`plain`) by its own message, anything else — a bug or
    the machine refusing — with its type, so it reads as one."""
    return str(e) if isinstance(e, plain) else f"{type(e).__name__}: {e}"


def in_thread(node: MessagePump, fn: Callable[[], Any], ended: type[WorkEnded], *, group: str,
              context: Any = None, exclusive: bool = False,
              plain: tuple[type[BaseException], ...] = (FmaeError,),
              left: Callable[[Any, str | None], None] | None = None) -> Worker[None]:
    """Run `fn` in a thread worker of `node` and post `ended(result, error, context)` to `node`.

    Any exception ends as the message's error line: nothing a worker raises takes the app down. A worker
    cancelled meanwhile (an `exclusive` one replaced by a newer) posts nothing. If the user left `node`
    while it worked (a screen popped: its messages go nowhere), `left(result, error)` runs on the UI
    thread instead, for work whose end the app must still hear of (data made, jobs queued)."""
    app = node.app  # from the UI thread: a node no longer on screen cannot reach its app

    def work() -> None:
        result, error = None, None
        try:
            result = fn()
        except Exception as e:
            error = error_line(e, plain)
        cancelled = get_current_worker().is_cancelled

        def end() -> None:  # on the UI thread, where a screen cannot be popped between the look and the post
            if not getattr(node, "is_attached", True):
                if left is not None:
                    left(result, error)
            elif not cancelled:
                node.post_message(ended(result, error, context))

        with contextlib.suppress(RuntimeError):  # the app closed while we worked: no one is left to tell
            app.call_from_thread(end)

    return node.run_worker(work, thread=True, group=group, exclusive=exclusive, exit_on_error=False)


class FmaeScreen(Screen[None]):
    """A main screen of the fmae app: the app and its project, work in a thread, and the few ways every
    screen says how work ended."""

    @property
    def fmae(self) -> FmaeApp:
        return cast("FmaeApp", self.app)

    @property
    def project(self) -> ProjectConfig:
        return self.fmae.project

    def confirm_cancel(self, job: Any, cancel: Callable[[], None]) -> None:
        """Ask before cancelling a queue job (the Queue and Run screens alike); `cancel` does it on yes."""
        from fmae.queue_ops import check_cancellable
        from fmae_tui.screens.confirm import ConfirmScreen

        try:
            check_cancellable([job])
        except FmaeError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        how = "it has not started" if job.state == "queued" else "it gets SIGTERM, saves a checkpoint and stops"
        self.app.push_screen(ConfirmScreen(f"Cancel job {job.id}?", f"{job.run_id}\n({how})"),
                             lambda yes: cancel() if yes else None)

    def tell(self, error: str | None, lines: list[str], title: str, failed: str | None = None) -> bool:
        """Say how a piece of work the user asked for ended: its error (titled `failed`, else `title`),
        or what it said, line by line. True when it worked."""
        if error is not None:
            self.notify(error, title=failed or title, severity="error", markup=False, timeout=10)
            return False
        self.notify("\n".join(lines), title=title, markup=False)
        return True

    def in_thread(self, fn: Callable[[], Any], ended: type[WorkEnded], *, group: str, context: Any = None,
                  exclusive: bool = False, plain: tuple[type[BaseException], ...] = (FmaeError,),
                  left: Callable[[Any, str | None], None] | None = None) -> Worker[None]:
        """`in_thread` on this screen: `ended` is one of its nested `WorkEnded` messages."""
        return in_thread(self, fn, ended, group=group, context=context, exclusive=exclusive, plain=plain,
                         left=left)
