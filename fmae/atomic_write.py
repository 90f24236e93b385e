"""Write files so a reader (or a crash) only ever sees the old or the new content, never half of each."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def new_file_mode(path: Path) -> int:
    """The mode a replacement of `path` gets: the old file's, else what open() would give (0o666 less the
    umask). mkstemp makes its files 0o600, which would hide run.toml and status.json from the other users
    of a shared runs folder."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux ≥ 4.7 shows it; reading it this way does not change it, even for a moment
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """`data` whole, or as chunks (a large file written without holding all of it in memory at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file lives in the target's folder so os.replace stays a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), new_file_mode(path))
            if isinstance(data, bytes):
                f.write(data)
            else:
                f.writelines(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp):  # name the file the caller wrote, not the temp
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
