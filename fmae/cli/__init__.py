"""`fmae`: the command line over the engine (`fmae.cli.main` builds the app; the console script runs `main`)."""

from fmae.cli.main import app, main

__all__ = ["app", "main"]
