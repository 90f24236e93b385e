"""The two kinds of failure a user can see, and the exit codes they map to.

Anything raised as one of these is printed as one line (no traceback) by the CLI and shown as a
notification by the app. Every other exception is a bug in fmae.
"""


class FmaeError(Exception):
    """Bad input or usage: the message names the file, line, key or flag to fix. Exit code 2."""

    exit_code = 2


class WorkFailed(Exception):
    """The input was fine but the work itself failed (a run crashed, a check found no data). Exit code 1."""

    exit_code = 1
