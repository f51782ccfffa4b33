"""Shared command-line plumbing: one-line errors with exit status 2, `--debug` for tracebacks."""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import sys
from pathlib import Path

from jaxguide import parallel, runtime
from jaxguide.checks import invalid
from jaxguide.checkpoint import CheckpointError
from jaxguide.data import DataError

_HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})")  # host:port, [v6]:port
USER_ERRORS = (ValueError, TypeError, CheckpointError, DataError, OSError, RuntimeError)
NAME_MAX = 255  # Bytes in one file name, on every common file system.


def exit_with(main) -> None:
    """Runs main on the command line's arguments and ends the process with `run`'s status.

    SIGINT and SIGTERM raise `runtime.Interrupted` where the program is, so that its cleanup
    runs (`runtime.Signals`); the process then ends at once with status 130 or 143
    (`runtime.exit_now`). Training has saved its checkpoint by then (saves are synchronous).
    """
    with runtime.Signals(hold=False):
        status = run(main)
    if status in runtime.INTERRUPTED:
        runtime.exit_now(status)
    sys.exit(status)


def run(main, argv=None) -> int:
    """Runs main(argv); a user error prints one line `error: ...` and returns 2."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        main([a for a in argv if a != "--debug"])
    except KeyboardInterrupt as e:  # runtime.Interrupted: 143 after SIGTERM.
        return getattr(e, "status", runtime.INTERRUPTED[0])
    except USER_ERRORS as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        try:
            print(f"error: {message}", file=sys.stderr)
        except (OSError, ValueError):  # A full or closed stderr: the status still says it.
            pass
        return 2
    return 0


class Console:
    """A text stream whose failures are ignored: a closed or full console (`> /dev/full`, a
    broken pipe) must not stop a training run or lose a command's outputs.

        out = Console(sys.stdout); print("done", file=out)
    """

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)  # tqdm picks its bar's characters.

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


def as_flag_error(e: Exception, names, prefix: str | None = None) -> Exception:
    """The library's error `e` in the command line's words, to raise `from e`: a message that
    starts with one of the library's argument `names` ("checkpoint_dir /x: not found",
    "batch_size: got 0") starts with its flag instead ("--checkpoint-dir /x: not found",
    "--batch-size: got 0"); any other is kept, after `prefix: ` when given (a flag)."""
    message = str(e)
    for name in names:
        if re.match(rf"{re.escape(name)}[ :]", message):
            return type(e)(f"--{name.replace('_', '-')}{message[len(name):]}")
    return type(e)(f"{prefix}: {message}" if prefix else message)


def check_path(flag: str, value: str | None) -> None:
    """A path argument must be non-empty, UTF-8 and usable by the OS (each part <= 255 bytes):
    else a ValueError naming `flag` now, not an OSError (or Orbax's C++ error) later."""
    if value is None:
        return
    shown = repr(value if len(value) <= 60 else value[:57] + "...")
    if not value.strip():
        raise invalid(flag, shown, "a folder path")
    try:
        value.encode("utf-8")
        os.stat(value)
    except UnicodeEncodeError:
        raise invalid(flag, shown, "a UTF-8 path") from None
    except (FileNotFoundError, NotADirectoryError):  # Else reported by whoever needs it to exist.
        if any(len(os.fsencode(part)) > NAME_MAX for part in Path(value).parts):  # To be made.
            raise _unusable(flag, shown, os.strerror(errno.ENAMETOOLONG)) from None
    except OSError as e:
        raise _unusable(flag, shown, e.strerror or e) from None


def _unusable(flag: str, shown: str, why) -> ValueError:
    """The error, to raise, for a path the OS cannot use."""
    return ValueError(f"{flag}: got {shown}, an unusable path ({why})")


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """`parser.parse_args(argv)`, after refusing the first unknown `--flag` by name (argparse's
    usage line and exit status 2), with the nearest known flag if one is close.

    argparse alone would first hand the value after an unknown flag to an optional positional
    argument: `sample.py --per-clas 4` would be "argument command: invalid choice: '4'".
    Flags must be spelt out (allow_abbrev=False); anything after `--` is positional.
    """
    # argparse keeps its flags here (no public accessor); a flag it lacks fails below anyway.
    known = [s for s in parser._option_string_actions if s.startswith("--")]
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            close = difflib.get_close_matches(flag, known, n=1)
            parser.error(f"unrecognized arguments: {flag}"
                         + (f" (did you mean {close[0]}?)" if close else ""))
    return parser.parse_args(argv)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--devices, and the flags that join a multi-process (multi-host) run."""
    g = parser.add_argument_group(
        "devices", "each batch is split over a jax.sharding mesh of devices; for several hosts, "
        "start the same command on each (see README, Scaling out)")
    g.add_argument("--devices", type=int, help="devices to use (default: all)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run (jax.distributed.initialize); enough by "
                   "itself on TPU pods, Slurm and Open MPI")
    g.add_argument("--coordinator-address", help="host:port of process 0 (or set "
                   "$JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)


def init_devices(args) -> "parallel.Mesh":
    """Joins the multi-process run if asked; returns the mesh of --devices."""
    n, i, address = args.num_processes, args.process_id, args.coordinator_address
    match = _HOST_PORT.fullmatch(address) if address is not None else None
    if address is not None and not (match and 1 <= int(match[2]) <= 65535):
        raise invalid("--coordinator-address", repr(address),
                      "host:port with a port in 1..65535 (e.g. 10.0.0.1:1234)")
    if n is not None and n < 1:
        raise invalid("--num-processes", str(n), "an integer >= 1")
    if i is not None and not 0 <= i < (n or 1 << 31):
        raise invalid("--process-id", str(i),
                      f"0..{'N-1' if n is None else n - 1} (N = --num-processes)")
    if args.distributed or any(v is not None for v in (address, n, i)):
        try:
            parallel.initialize(address, n, i)
        except ValueError as e:  # parallel's message names the Python arguments.
            reason = str(e.__cause__ or e).rstrip(".")
            raise ValueError(f"--distributed: {reason}; pass --coordinator-address, "
                             "--num-processes and --process-id (or run on a TPU pod, Slurm "
                             "or Open MPI)") from e
    try:
        return parallel.make_mesh(args.devices)
    except ValueError as e:
        raise ValueError(f"--{e}") from e
