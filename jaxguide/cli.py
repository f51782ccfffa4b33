"""Shared command-line plumbing: one-line errors with exit status 2, `--debug` for tracebacks."""

from __future__ import annotations

import sys

from jaxguide.checkpoint import CheckpointError
from jaxguide.data import DataError

USER_ERRORS = (ValueError, TypeError, CheckpointError, DataError, FileNotFoundError,
               PermissionError, RuntimeError)


def run(main, argv=None) -> int:
    """Runs main(argv); a user error prints one line `error: ...` and returns 2."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        main([a for a in argv if a != "--debug"])
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
