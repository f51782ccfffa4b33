"""Data parallelism with `jax.sharding`: a 1-D mesh whose axis "data" splits the batch.

The same jitted code runs on 1 or N devices and on several hosts: arrays carry their
sharding, and XLA inserts the collectives (the gradient all-reduce in training). Global
arrays are built from host data that every process holds in full (the MNIST arrays, the
labels to sample), so no process ever needs another's data.

    mesh = make_mesh()                        # all devices of all processes
    images = shard_batch(mesh, images)        # (B, ...) split over "data"
    state = replicate(mesh, state)            # every device holds all of it
"""

from __future__ import annotations

import numbers

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxguide.checks import invalid

AXIS = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`), before any other JAX call.

    On TPU pods, Slurm and Open MPI the arguments are detected; elsewhere pass all three
    (or set JAX_COORDINATOR_ADDRESS and pass the other two).
    """
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, TypeError) as e:  # Missing or inconsistent arguments.
        raise ValueError(f"distributed: {str(e).rstrip('.')}; pass coordinator_address, "
                         "num_processes and process_id (or run on a TPU pod, Slurm or "
                         "Open MPI)") from e


def make_mesh(devices: int | None = None) -> Mesh:
    """A mesh ("data",) over the first `devices` devices (default: all, of all processes)."""
    available = jax.devices()
    n = len(available)
    devices = n if devices is None else devices
    if isinstance(devices, bool) or not (isinstance(devices, numbers.Integral)
                                         and 1 <= devices <= n):
        raise invalid("devices", repr(devices), f"1..{n} (the {available[0].platform} devices)")
    if jax.process_count() > 1 and devices != n:
        raise invalid("devices", str(devices), f"all {n} (a multi-process run uses all devices)")
    return Mesh(np.asarray(available[:devices]), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over "data"."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(name: str, size: int, mesh: Mesh) -> None:
    """A batch of `size` must split evenly over the mesh."""
    if size % mesh.size:
        raise invalid(name, str(size), f"a multiple of the {mesh.size} devices (split evenly)")


def constrain_batch(x: jax.Array, mesh: Mesh | None, axis: int = 0) -> jax.Array:
    """Inside jit: `x` split over "data" along `axis` (unchanged without a mesh)."""
    if mesh is None:
        return x
    spec = PartitionSpec(*(None,) * axis, AXIS)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _global(x, sharding: NamedSharding) -> jax.Array:
    """`x` placed with exactly `sharding` (a jitted function compiled for one sharding
    recompiles for another, even an equivalent one)."""
    if isinstance(x, jax.Array) and (x.sharding == sharding or sharding.is_fully_addressable):
        return jax.device_put(x, sharding)  # On device; a no-op where it is there already.
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(mesh: Mesh, *arrays):
    """Global arrays (B, ...) split over "data" from host arrays every process holds in full."""
    out = tuple(_global(x, batch_sharding(mesh)) for x in arrays)
    return out[0] if len(out) == 1 else out


def replicate(mesh: Mesh, tree):
    """A pytree of arrays, each copied whole to every device of the mesh."""
    return jax.tree.map(lambda x: _global(x, replicated(mesh)), tree)


def to_host(x) -> np.ndarray:
    """The whole of a (possibly multi-process) global array, as numpy on every process."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
