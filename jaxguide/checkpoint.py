"""Orbax checkpoints with validated JSON metadata.

Two kinds, both plain directories of arrays (no pickle: restoring never runs code):
* training checkpoints: an Orbax `CheckpointManager` in `<workdir>/checkpoints/<step>/`
  holding the whole TrainState and its metadata; commits are atomic, so a crash never
  leaves a checkpoint that would be restored half-written;
* model checkpoints (what `sample.py` loads): `<dir>/metadata.json` beside `<dir>/state/`,
  the eval-mode variables. Metadata is read and validated before any array is.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import inspect
import json
import logging
import os
import platform
import re
import reprlib
import shutil
import sys
import traceback
import types
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxguide import runtime
from jaxguide.configs import MODELS, OLD_MODEL_NAMES, TASKS
from jaxguide.sde import VPSDE

FORMAT = "jaxguide.checkpoint"
REFERENCE_FILE = "reference_stats.npz"  # An evaluator's test-set statistics (metrics.py).
MODEL_FILES = ("metadata.json", "state", REFERENCE_FILE)  # What a model checkpoint holds.
FORMAT_VERSION = 1
_ORBAX_DIR = os.path.dirname(ocp.__file__)
_TENSORSTORE_STATUS = re.compile(r"[A-Z][A-Z_]+: ")  # absl status codes: "DATA_LOSS: ..."
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "jaxguide")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, incompatible or of the wrong model."""


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that produced a result."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def stamp(metadata: dict[str, Any]) -> dict[str, Any]:
    """Adds the format tag and library versions to metadata."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **metadata}


def check_format(metadata: Any, where: str) -> dict[str, Any]:
    """Validates the format tag of metadata read from `where`."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a jaxguide checkpoint (no '{FORMAT}' metadata)")
    version = metadata.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{where}: format_version: got {reprlib.repr(version)}; accepted "
                              f"an integer in 1..{FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: format version {version} is newer than this jaxguide "
                              f"reads ({FORMAT_VERSION}); upgrade jaxguide")
    return metadata


def _reason(e: BaseException, limit: int = 200) -> str:
    """The root cause of `e` in one short line (TensorStore appends its whole spec to it)."""
    while e.__cause__ is not None:
        e = e.__cause__
    line = (str(e).splitlines() or [type(e).__name__])[0].split(" [tensorstore_spec")[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


@contextlib.contextmanager
def _reading(what: str):
    """Turns a failure of the Orbax reads inside into one CheckpointError: `what (reason)`."""
    _drop_abandoned_read_reports()  # Before: they may report before the error reaches here.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax's warnings about what is missing: the error says it.
    try:
        yield
    except Exception as e:  # Orbax and TensorStore raise many types for damaged files.
        _close_unstarted_reads_at_exit()
        raise CheckpointError(f"{what} ({_reason(e)})") from e
    finally:
        absl.setLevel(level)


def _drop_abandoned_read_reports() -> None:
    """Keeps stderr to the one error message when an Orbax read fails.

    Orbax then closes its event loop with its other reads still in flight. As each one ends
    it reports, after the error: to `sys.unraisablehook` (its TensorStore callback finds the
    event loop closed, or its coroutine raises as it is collected) or to the "asyncio" logger
    (a future whose exception was never retrieved). Installs (once) a wrapper of the hook
    and a filter of that logger which drop such reports from Orbax's code; all others pass.
    """
    hook = sys.unraisablehook
    if getattr(hook, "drops_abandoned_reads", False):
        return

    def filtered(report):
        code = getattr(report.object, "cr_code", None)
        abandoned = (str(report.exc_value) == "Event loop is closed"
                     or (code is not None and code.co_filename.startswith(_ORBAX_DIR)))
        if not abandoned:
            hook(report)

    filtered.drops_abandoned_reads = True
    sys.unraisablehook = filtered
    logging.getLogger("asyncio").addFilter(_not_an_abandoned_read)


@functools.cache
def _close_unstarted_reads_at_exit() -> None:
    """After a failed Orbax read, its reads that never started are collected as the
    interpreter exits, each with a RuntimeWarning "coroutine ... was never awaited" that no
    warnings filter stops by then. Registers (once) an exit handler that closes them first
    (closing a coroutine that never ran runs none of it); other coroutines still warn."""
    atexit.register(_close_unstarted_reads)


def _close_unstarted_reads() -> None:
    for obj in gc.get_objects():
        if (isinstance(obj, types.CoroutineType)
                and obj.cr_code.co_filename.startswith(_ORBAX_DIR)
                and inspect.getcoroutinestate(obj) == inspect.CORO_CREATED):
            obj.close()


def _not_an_abandoned_read(record: logging.LogRecord) -> bool:
    """False for an asyncio report of an Orbax read's exception that nobody retrieved: raised
    in Orbax's code, or set on the future by TensorStore's C++ (no Python frames, a status
    code first: "OUT_OF_RANGE: Error reading ...")."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None or "never retrieved" not in record.getMessage():
        return True
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    from_tensorstore = not files and _TENSORSTORE_STATUS.match(str(exc)) is not None
    return not (from_tensorstore or any(f.startswith(_ORBAX_DIR) for f in files))


# Training checkpoints ---------------------------------------------------------------------

def manager(workdir: str | Path, keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager over `<workdir>/checkpoints`, keeping the last `keep`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                           create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save_train(mgr: ocp.CheckpointManager, step: int, state, metadata: dict[str, Any]) -> None:
    """Saves the TrainState and its metadata atomically as checkpoint `step`."""
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           metadata=ocp.args.JsonSave(stamp(metadata))), force=True)
    mgr.wait_until_finished()


def read_train_metadata(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The metadata of training checkpoint `step`, validated, without reading arrays."""
    where = f"{mgr.directory}/{step}"
    with _reading(f"{where}: unreadable checkpoint metadata; remove this step's folder to "
                  "resume from an earlier one"):
        restored = mgr.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return check_format(restored.metadata, where)


def restore_train(mgr: ocp.CheckpointManager, step: int, abstract_state):
    """Restores training checkpoint `step` into the structure of `abstract_state`."""
    where = f"{mgr.directory}/{step}"
    if not (Path(where) / "state").is_dir():
        raise CheckpointError(f"{where}: no state/ (damaged); accepted a whole checkpoint: "
                              "remove this step's folder to resume from an earlier one")
    with _reading(f"{where}: arrays unreadable or not of the configured model"):
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    return restored.state


# Model checkpoints -------------------------------------------------------------------------

def _as_path(path) -> Path:
    """`path` as a Path; a TypeError or ValueError names the argument unless it is a
    non-empty str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: got {reprlib.repr(path)}; accepted a str or os.PathLike folder")
    if not os.fspath(path):
        raise ValueError("path: got ''; accepted the path of a folder")
    return Path(path)


def _model_checkpoint_metadata(path: Path) -> dict[str, Any] | None:
    """The format-checked metadata of the model checkpoint folder (not a link) `path`, or None
    if `path` is not one."""
    try:
        return None if path.is_symlink() else _read_metadata_file(path)
    except CheckpointError:
        return None


def check_replaceable(path: str | Path, task: str | None = None) -> Path:
    """Raises unless `path` is free or holds only a jaxguide model checkpoint (of `task`,
    unless None), which `save_model` replaces: a user's own file or folder, anything else
    kept in the model's folder, or a model of another task is never deleted."""
    path = _as_path(path)
    if not os.path.lexists(path):
        return path
    meta = _model_checkpoint_metadata(path)
    if meta is None:
        raise CheckpointError(
            f"{path}: exists and is not a jaxguide model checkpoint, so it is not replaced; "
            "accepted a new path or a model checkpoint to overwrite")
    extra = sorted(p.name for p in path.iterdir() if p.name not in MODEL_FILES)
    if extra:
        raise CheckpointError(f"{path}: holds {', '.join(extra[:3])} besides the model, so it "
                              "is not replaced; accepted a new path or a model checkpoint alone")
    if task is not None and meta.get("task") != task:
        raise CheckpointError(f"{path}: holds a {meta.get('task')!r} model, not replaced by a "
                              f"{task!r} one; accepted a new path (another work dir)")
    return path


def save_model(path: str | Path, variables, metadata: dict[str, Any]) -> Path:
    """Writes eval-mode `variables` and metadata to `path`, a new path or a model checkpoint
    (replaced, once the new one is complete); anything else there is refused before writing.

    In a multi-process run every process calls it (Orbax writes the arrays collectively);
    process 0 writes the metadata and commits.
    """
    _as_path(path)
    meta_text = _model_metadata_text(metadata)
    path = check_replaceable(path, metadata["task"]).absolute()
    _check_variables(variables)
    _check_arrays_match("variables", variables, _model_of(metadata, "metadata")[1],
                        "the model that metadata describes (model, model_kwargs, image_shape)")
    try:
        tmp = runtime.staging_dir(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write in {path.parent} ({e.strerror or e}); "
                              "accepted a path in a writable folder") from e
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "state", variables)
            ckptr.wait_until_finished()
        if jax.process_index() == 0:
            (tmp / "metadata.json").write_text(meta_text)
            runtime.move_into_place(tmp, path)
    finally:
        if jax.process_index() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # Gone already after a commit.
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_model {path}: done")
    return path


def _model_metadata_text(metadata) -> str:
    """The JSON text of a model checkpoint's metadata, checked as `load_model` will."""
    if not isinstance(metadata, dict):
        raise CheckpointError(f"metadata: got {type(metadata).__name__}, accepted a dict")
    meta = check_model_metadata(stamp(metadata), "metadata")
    try:
        return json.dumps(meta, indent=2)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"metadata: not JSON ({e}); accepted plain numbers, strings, "
                              "lists and dicts") from e


def _check_variables(variables) -> None:
    """Raises unless `variables` is a non-empty pytree of arrays with finite values."""
    leaves = jax.tree_util.tree_leaves(variables)
    if not leaves or not all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
        raise CheckpointError(f"variables: got {reprlib.repr(variables)}; accepted a non-empty "
                              "pytree of arrays")
    if any(jnp.issubdtype(x.dtype, jnp.inexact) and not jnp.isfinite(x).all() for x in leaves):
        raise CheckpointError("variables: contain NaN or inf; accepted finite values")


def _read_metadata_file(path: Path) -> dict[str, Any]:
    """The format-checked `<path>/metadata.json` of a model checkpoint."""
    if not path.is_dir():
        what = "a file, not a folder" if os.path.lexists(path) else "not found"
        raise CheckpointError(f"checkpoint dir {path}: {what}")
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint dir {path}: no metadata.json (empty, half-written "
                              "or not a jaxguide model checkpoint)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_file}: unreadable JSON ({e})") from e
    return check_format(meta, str(path))


def _positive_ints(value, n: int) -> bool:
    """Whether `value` is a list of `n` integers > 0 (bools excluded)."""
    return (isinstance(value, list) and len(value) == n
            and all(type(v) is int and v > 0 for v in value))


_SDE_FIELDS = ("beta_min", "beta_max", "T")
# The fields `load_model` needs: field -> (is the value valid, what is accepted).
_MODEL_FIELDS = {
    "task": (lambda v: v in TASKS, f"one of {', '.join(TASKS)}"),
    "model": (lambda v: isinstance(v, str), "a model name (a string)"),
    "model_kwargs": (lambda v: isinstance(v, dict), "an object of the model's arguments"),
    "sde": (lambda v: isinstance(v, dict) and v.keys() == set(_SDE_FIELDS),
            f"an object with exactly {', '.join(_SDE_FIELDS)} (numbers > 0)"),
    "image_shape": (lambda v: _positive_ints(v, 3), "a list of 3 integers > 0 [H, W, C]"),
}


def check_model_metadata(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Raises a CheckpointError naming `where` and the field unless `meta` has every field
    `load_model` needs, valid."""
    for field, (valid, accepted) in _MODEL_FIELDS.items():
        if field not in meta:
            raise CheckpointError(f"{where}: no {field!r} field; accepted {accepted}")
        if not valid(meta[field]):
            raise CheckpointError(f"{where}: {field}: got {reprlib.repr(meta[field])}; "
                                  f"accepted {accepted}")
    if OLD_MODEL_NAMES.get(meta["model"], meta["model"]) not in MODELS[meta["task"]]:
        raise CheckpointError(f"{where}: model: got {meta['model']!r} for task "
                              f"{meta['task']!r}; accepted {', '.join(MODELS[meta['task']])}")
    try:
        VPSDE(**meta["sde"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: sde: {e}") from e
    return meta


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The validated metadata of the model checkpoint at `path`; reads no arrays."""
    path = _as_path(path)
    return check_model_metadata(_read_metadata_file(path), str(path / "metadata.json"))


def load_variables(path: str | Path, abstract_variables):
    """Restores the arrays of a model checkpoint into the structure of `abstract_variables`.

    Orbax's metadata of `state/` is compared with the target first: a checkpoint of another
    model is told apart from a corrupt one, and no array is read unless all fit.
    """
    path = _as_path(path)
    state_dir = path.absolute() / "state"
    if not state_dir.is_dir():
        raise CheckpointError(f"checkpoint dir {path}: no state/ (half-written?)")
    unreadable = f"checkpoint dir {path}: state/ unreadable: corrupt or incomplete"
    with _reading(unreadable):
        stored = ocp.StandardCheckpointHandler().metadata(state_dir).tree
    _check_arrays_match(f"checkpoint dir {path}", stored, abstract_variables,
                        "the model that metadata.json describes (model_kwargs, image_shape)")
    with _reading(unreadable), ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(state_dir, abstract_variables)


def _check_arrays_match(where: str, stored, expected, model: str) -> None:
    """Raises unless the arrays of `stored` have the names and shapes of `expected`, the
    variables of `model` (words for the message)."""
    have, want = _shapes(stored), _shapes(expected)
    problems = [f"{k} is missing" for k in want if k not in have]
    problems += [f"{k} is not in the model" for k in have if k not in want]
    problems += [f"{k} has shape {have[k]}, the model expects {want[k]}"
                 for k in want if k in have and have[k] != want[k]]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{where}: arrays do not match the model: {problems[0]}{more}; "
                              f"accepted the arrays of {model}")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """keystr(path) -> shape of each array (or array metadata) in `tree`."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(k): tuple(x.shape) for k, x in leaves}


def abstract(tree):
    """The target of a restore: ShapeDtypeStructs of a pytree of arrays (or of abstract
    arrays), placed as they are, or on the first local device where they have no sharding.

    A restore is always told where to put the arrays, so that a checkpoint written on N
    devices (or hosts) restores on any other number.
    """
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or here), tree)


def load_model(path: str | Path, task: str | None = None):
    """Loads a model checkpoint: returns (model, variables, metadata).

    Args:
      path: a directory written by `save_model` (e.g. `checkpoints/denoiser`).
      task: if given ("denoiser", "classifier", "evaluator"), the checkpoint must be one.
    """
    if task is not None and (not isinstance(task, str) or task not in TASKS):
        raise ValueError(f"task: got {task!r}, accepted {', '.join(TASKS)} or None")
    meta = read_model_metadata(path)
    if task is not None and meta["task"] != task:
        raise CheckpointError(f"checkpoint dir {path}: holds a {meta['task']!r} model, "
                              f"expected a {task!r} model")
    model, shapes = _model_of(meta, Path(path) / "metadata.json")
    return model, load_variables(path, abstract(shapes)), meta


def _model_of(meta: dict[str, Any], where) -> tuple[Any, Any]:
    """(model, its variables as ShapeDtypeStructs) that checked `meta` describes; computes
    nothing. A CheckpointError names `where` if the model does not build or run."""
    from jaxguide.nets import make_model  # Local: nets are only needed to restore.

    try:
        model = make_model(meta["model"], meta["model_kwargs"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: unknown model or model_kwargs ({e})") from e
    x = jax.ShapeDtypeStruct((1, *meta["image_shape"]), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    try:  # Traces the model without computing anything.
        shapes = jax.eval_shape(model.init, jax.random.key(0), x, t)
    except Exception as e:  # Flax, JAX and the model's own code: all say the same here.
        raise CheckpointError(
            f"{where}: model {meta['model']!r} does not run with model_kwargs "
            f"{reprlib.repr(meta['model_kwargs'])} on image_shape {meta['image_shape']} "
            f"({_reason(e)}); accepted values the model runs with") from e
    return model, shapes
