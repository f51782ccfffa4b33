"""Operational safety, apart from the ML: the one way SIGINT and SIGTERM are handled (by both
CLIs and by training), folder locks, writability probes, staged writes and ownership marks.

Nothing here knows a flag: a function that can refuse takes the `name` of the argument (or
flag) its path came from, and its errors say that name.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked against each other.
    fcntl = None

import jax
from jax.experimental import multihost_utils

# Signals ----------------------------------------------------------------------------------

SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = (130, 143)  # Exit statuses after SIGINT (Ctrl-C) and SIGTERM: 128 + signal.


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM as an exception, raised so that the cleanup on its way out runs.
    `status` is the conventional exit status, 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = 128 + signum


class Signals:
    """Handles SIGINT and SIGTERM while the `with` block runs (from the main thread only),
    then gives them back to the handlers it replaced.

    * `Signals(hold=False)`: each signal raises `Interrupted` where the program is, so that
      its cleanup runs (a CLI's whole run: `cli.exit_with`).
    * `Signals()`: each signal is recorded instead; `signum` is the first (None while none).
      A step that must not be cut in two (outputs moving into place) lets the block end: the
      first signal then takes effect, delivered to the handler the block replaced. A loop
      polls `signum` between steps and `take()`s it to stop in its own way (training saves a
      checkpoint, then raises what `take` returns).

    Masking the signals would not do: another thread of the process, XLA's, would take them.
    """

    def __init__(self, hold: bool = True):
        self.hold = hold
        self.caught: list[int] = []

    @property
    def signum(self) -> int | None:
        """The first signal caught and not taken, or None."""
        return self.caught[0] if self.caught else None

    def take(self) -> Interrupted:
        """The first signal caught, as the Interrupted to raise; it is not delivered again."""
        signum = self.caught[0]
        self.caught.clear()
        return Interrupted(signum)

    def _handle(self, signum, frame):
        if not self.hold:
            raise Interrupted(signum)
        self.caught.append(signum)

    def __enter__(self) -> Signals:
        self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        if self.caught:
            signum = self.caught[0]
            self.caught.clear()
            handler = self._old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def exit_now(status: int) -> None:
    """Ends the process at once with `status`, its output flushed: after Ctrl-C (or SIGTERM)
    a normal interpreter shutdown while XLA's threads still compile or run can crash (a
    segfault)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # A full or closed console: the status still says it.
            pass
    os._exit(status)


# Folders ----------------------------------------------------------------------------------

def ensure_writable_dir(path: str | Path, name: str, probe_bytes: int = 1 << 20) -> Path:
    """Creates directory `path`, proves it writable with a `probe_bytes` file and returns it
    (resolved if it does not lead there as written, e.g. "new/../x").

    Raises a ValueError naming `name` (the argument `path` came from) before any work starts,
    rather than a failed save after it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path}: is a file, accepted a folder (new or existing)")
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{name} {path}: a link to {os.readlink(path)}, which does not exist; "
                         "accepted a folder (new or existing)")
    try:
        real = os.path.realpath(path)  # "new/../x" makes x, not also new.
        Path(real).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=real) as probe:  # A new file: never a user's.
            probe.write(b"\0" * probe_bytes)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise ValueError(f"{name} {path}: not writable ({e.strerror or e})") from e
    return path if path.is_dir() else Path(real)  # "new/../x" does not lead anywhere.


@contextlib.contextmanager
def held_exclusively(path: str | Path, name: str, user: str):
    """Holds an advisory lock on the existing folder `path` for the block (in process 0, which
    writes for the others): a second run on the same folder is refused with a ValueError
    naming `name` instead of mixing its files with this run's. `user`: who holds it."""
    if fcntl is None or jax.process_index() > 0:
        yield
        return
    fd = os.open(os.path.realpath(path), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{name} {path}: in use by another {user}; wait for it to end or "
                             f"choose another {name}") from None
        yield
    finally:
        os.close(fd)  # Releases the lock.


@contextlib.contextmanager
def removed_if_left_empty(path: str | Path):
    """On an exception inside, removes the folder `path` and the parents the block created,
    if it created them and they hold no file (only empty folders, if any): a run that fails
    before writing anything leaves no trace."""
    path = Path(os.path.realpath(path))  # "new/../old" is old: never counted as made here.
    new = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        if new and path.is_dir() and not any(files for _, _, files in os.walk(path)):
            shutil.rmtree(path, ignore_errors=True)
            for folder in new[1:]:  # Deepest first; rmdir refuses a folder that is not empty.
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


@contextlib.contextmanager
def output_folder(path: str | Path, name: str, user: str):
    """Creates the folder `path` and proves it writable (before any work); yields its Path,
    held against other runs (`held_exclusively`, refused naming `name`, in use by another
    `user`). If the block fails, the folders it created are removed again while they hold no
    file: a failed run leaves no empty folder behind, and never touches one that existed
    before."""
    with removed_if_left_empty(path):
        folder = ensure_writable_dir(path, name)
        with held_exclusively(folder, name, user):
            yield folder


# Staged writes ----------------------------------------------------------------------------

def staging_dir(path: Path) -> Path:
    """A new hidden folder beside `path`, to write in and then rename to `path`
    (`move_into_place`); an OSError if it cannot be made. In a multi-process run, a name
    every process agrees on, cleared by process 0 first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if jax.process_count() == 1:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; what is written there is to be shared.
    else:
        tmp = path.parent / f".{path.name}.tmp"
        if jax.process_index() == 0 and tmp.exists():
            shutil.rmtree(tmp)
        multihost_utils.sync_global_devices(f"save_model {path}: start")
    return tmp


def move_into_place(tmp: Path, path: Path) -> None:
    """Renames `tmp` to `path`. A folder at `path` is first moved aside, then deleted once
    `tmp` has taken its place (or put back if that fails)."""
    old = tmp.with_name(tmp.name + ".replaced")
    if path.exists():
        path.rename(old)
    try:
        tmp.rename(path)
    except OSError:
        if old.exists():
            old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def replace_text(path: Path, text: str) -> None:
    """Replaces the file `path` with one holding `text`, atomically: a kill leaves the old
    file or the new one. Written first to a new hidden file beside it, never a user's."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


@contextlib.contextmanager
def writing_to(out: Path, name: str, remove=(), prefix: str = ".staged."):
    """Yields `stage(file)`: the path to write `out/file` to, in a new hidden folder of `out`
    (named `prefix`...: never a user's file, and another run's are its own). The files move
    into place together when the block ends, and the files `out/file` for `file` in `remove`
    (an earlier run's outputs this run does not write) are deleted; nothing changes if the
    block fails or is interrupted (no half-written or mixed outputs). A failed write (a folder
    in a file's place, a full disk) becomes one ValueError naming `name` (the argument `out`
    came from) and the file. Check the names first with `check_outputs`."""
    staged, staging = {}, None

    def stage(file: str) -> Path:
        staged[out / file] = staging / file
        return staged[out / file]

    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
        yield stage
        with Signals():  # Every file moves into place: all old or all new outputs.
            for path, tmp in staged.items():
                os.replace(tmp, path)
            for file in remove:
                (out / file).unlink(missing_ok=True)
    except OSError as e:
        finals = {str(tmp): path for path, tmp in staged.items()}
        file = e.filename2 or finals.get(str(e.filename), e.filename) or "a file"
        raise ValueError(f"{name} {out}: cannot write {file} ({e.strerror or e})") from e
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


# Ownership marks --------------------------------------------------------------------------

SOFTWARE = "jaxguide"  # Written into every PNG and GIF jaxguide makes (viz): see `made_here`.


def made_here(path: str | Path) -> bool:
    """Whether the regular file `path` is a PNG or GIF written by jaxguide's viz (its metadata
    names SOFTWARE); an unreadable file raises OSError."""
    from PIL import Image

    if not Path(path).is_file():
        return False
    raw = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            tag = {"PNG": lambda: im.text.get("Software"),
                   "GIF": lambda: im.info.get("comment")}.get(im.format, lambda: None)()
    except Exception:  # noqa: BLE001 - whatever PIL cannot parse is not ours.
        return False
    return tag in (SOFTWARE, SOFTWARE.encode())


def npz_holds(path: str | Path, arrays) -> bool:
    """Whether `path` is an npz archive holding (at least) the named `arrays`."""
    try:
        with zipfile.ZipFile(path) as z:
            return {f"{a}.npy" for a in arrays} <= set(z.namelist())
    except (zipfile.BadZipFile, ValueError, EOFError):  # EOFError: a truncated archive.
        return False


def check_outputs(out: Path, outputs: dict, written, name: str) -> None:
    """Refuses (a ValueError naming `name`, the argument `out` came from) to replace or remove
    a file of one of `outputs`' names that this program did not write. `outputs`: file name
    -> (what it is, whether a file of that name is one); `written`: the names this run
    writes, the others it removes. Called before any work."""
    if not out.is_dir():  # "new/../x" is x (see ensure_writable_dir).
        out = Path(os.path.realpath(out))
    for file, (kind, ours) in outputs.items():
        path = out / file
        if os.path.islink(path) or (os.path.lexists(path) and not path.is_file()):
            what = "a folder" if path.is_dir() else "not a regular file"
        elif not path.is_file():
            continue
        else:
            try:
                if ours(path):
                    continue
                what = f"not {kind}"
            except OSError as e:
                what = f"unreadable ({e.strerror or e})"
        action = (f"cannot write {path}: it exists and is" if file in written else
                  f"cannot remove {path} (this run writes no {file}): it is")
        raise ValueError(f"{name} {out}: {action} {what}; move it away or choose another {name}")
