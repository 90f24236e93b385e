"""The two kinds of failure a user can see, and the exit codes they map to.

Anything raised as one of these is printed as one line (no traceback) by the CLI and shown as a
notification by the app. Every other exception is a bug in fmae — except the machine's own refusals
(`environment_error`: no permission, a read-only or full disk), which are said in one line too.
"""

from __future__ import annotations

import errno


class FmaeError(Exception):
    """Bad input or usage: the message names the file, line, key or flag to fix. Exit code 2."""

    exit_code = 2


class WorkFailed(Exception):
    """The input was fine but the work itself failed (a run crashed, a check found no data). Exit code 1."""

    exit_code = 1


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)


def environment_error(e: BaseException) -> FmaeError | None:
    """An OSError the user can fix (permissions, a read-only file system, a full disk or quota) as one
    line naming the file and what to do; None for anything else."""
    if not isinstance(e, OSError) or e.errno not in _NO_SPACE + _NO_ACCESS:
        return None
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    if e.errno in _NO_SPACE:
        return FmaeError(f"{where}cannot write ({what}) — free disk space (or raise the quota/file size limit) "
                         "and run the command again; files written before are unchanged")
    return FmaeError(f"{where}cannot write ({what}) — make it writable for this user, or choose another "
                     "location (runs_dir in fmae.toml, --runs-dir)")


def failure_hint(e: BaseException) -> str:
    """What to do about a run that failed with `e`, as ' — …', or '' when there is nothing to add."""
    text = str(e).lower()
    if "out of memory" in text or "can't allocate memory" in text or isinstance(e, MemoryError):
        return (" — out of memory: lower --batch-size (and raise accum_iter to keep the effective batch), "
                "or give the run a GPU with more free memory; retry resumes from the last checkpoint")
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return " — free disk space, then retry the run: it resumes from its last checkpoint"
    if isinstance(e, OSError) and e.errno in _NO_ACCESS:
        return " — make the run folder writable, then retry the run"
    return ""
