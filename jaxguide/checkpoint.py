"""Orbax checkpoints with validated JSON metadata.

Two kinds, both plain directories of arrays (no pickle: restoring never runs code):
* training checkpoints: an Orbax `CheckpointManager` in `<workdir>/checkpoints/<step>/`
  holding the whole TrainState and its metadata; commits are atomic, so a crash never
  leaves a checkpoint that would be restored half-written;
* model checkpoints (what `sample.py` loads): `<dir>/metadata.json` beside `<dir>/state/`,
  the eval-mode variables. Metadata is read and validated before any array is.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

FORMAT = "jaxguide.checkpoint"
FORMAT_VERSION = 1
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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format version {version!r} is newer than this jaxguide reads "
            f"({FORMAT_VERSION}); upgrade jaxguide")
    return metadata


# Training checkpoints ---------------------------------------------------------------------

def ensure_writable_dir(path: str | Path, name: str, probe_bytes: int = 1 << 20) -> Path:
    """Creates directory `path` and proves it writable with a `probe_bytes` file.

    Raises a ValueError naming `name` (the argument `path` came from) before any work starts,
    rather than a failed save after it.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe.{jax.process_index()}"
        probe.write_bytes(b"\0" * probe_bytes)
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{name} {path}: not writable ({e.strerror or e})") from e
    return path


def manager(workdir: str | Path, keep: int = 2) -> ocp.CheckpointManager:
    """A synchronous CheckpointManager over `<workdir>/checkpoints`, keeping the last `keep`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                           create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save_train(mgr: ocp.CheckpointManager, step: int, state, metadata: dict[str, Any]) -> None:
    """Saves the TrainState and its metadata atomically as checkpoint `step`."""
    mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(stamp(metadata))), force=True)
    mgr.wait_until_finished()


def read_train_metadata(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The metadata of training checkpoint `step`, validated, without reading arrays."""
    where = f"{mgr.directory}/{step}"
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises several types for unreadable directories.
        raise CheckpointError(f"{where}: unreadable checkpoint metadata ({e})") from e
    return check_format(restored.metadata, where)


def restore_train(mgr: ocp.CheckpointManager, step: int, abstract_state):
    """Restores training checkpoint `step` into the structure of `abstract_state`."""
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
        raise CheckpointError(
            f"{mgr.directory}/{step}: arrays do not match the configured model ({e})") from e
    return restored.state


# Model checkpoints -------------------------------------------------------------------------

def save_model(path: str | Path, variables, metadata: dict[str, Any]) -> Path:
    """Writes eval-mode `variables` and metadata to `path` (replaced atomically).

    In a multi-process run every process calls it (Orbax writes the arrays collectively);
    process 0 writes the metadata and commits.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if jax.process_count() == 1:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared.
    else:  # A name every process agrees on, cleared by process 0 first.
        tmp = path.parent / f".{path.name}.tmp"
        if jax.process_index() == 0 and tmp.exists():
            shutil.rmtree(tmp)
        multihost_utils.sync_global_devices(f"save_model {path}: start")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "state", variables)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (tmp / "metadata.json").write_text(json.dumps(stamp(metadata), indent=2))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_model {path}: done")
    return path


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The validated metadata of the model checkpoint at `path`; reads no arrays."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint dir {path}: not found")
    meta_file = path / "metadata.json"
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint dir {path}: no metadata.json (empty, half-written "
                              "or not a jaxguide model checkpoint)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_file}: unreadable JSON ({e})") from e
    return check_format(meta, str(path))


def load_variables(path: str | Path, abstract_variables):
    """Restores the arrays of a model checkpoint into the structure of `abstract_variables`."""
    state_dir = Path(path).absolute() / "state"
    if not state_dir.is_dir():
        raise CheckpointError(f"checkpoint dir {path}: no state/ (half-written?)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(state_dir, abstract_variables)
    except Exception as e:
        raise CheckpointError(f"checkpoint dir {path}: arrays do not match the model ({e})") from e


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
    from jaxguide.nets import make_model  # Local: nets are only needed to restore.

    meta = read_model_metadata(path)
    if task is not None and meta.get("task") != task:
        raise CheckpointError(f"checkpoint dir {path}: holds a {meta.get('task')!r} model, "
                              f"expected a {task!r} model")
    try:
        model = make_model(meta["model"], meta.get("model_kwargs", {}))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint dir {path}: unknown model in metadata ({e})") from e
    shapes = jax.eval_shape(model.init, jax.random.key(0), *_example_inputs(meta))
    variables = load_variables(path, abstract(shapes))
    return model, variables, meta


def _example_inputs(meta):
    import jax.numpy as jnp
    shape = tuple(meta.get("image_shape", (28, 28, 1)))
    return jnp.zeros((1,) + shape), jnp.zeros((1,))
