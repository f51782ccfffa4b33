"""Reverse-time samplers for the VP-SDE: each is one `lax.scan` under `jit`.

The time grid runs from T down to `t_min` in `n_steps` steps. Randomness is per sample:
image i draws its noise from `fold_in(key, indices[i])`, so it does not depend on the
batch it is sampled in. Shapes: score_fn(x, t) with x (B, ...) and t (B,) → (B, ...).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jaxguide.guidance import _as_partial
from jaxguide.sde import VPSDE, _expand

METHODS = ("euler_maruyama",)
INITS = ("prior", "clipped")


def _eps_score(eps_fn, sde, min_std, x, t):
    return -eps_fn(x, t) / _expand(jnp.maximum(sde.std(t), min_std), x)


def score_from_eps(eps_fn, sde: VPSDE, min_std: float = 0.01) -> Partial:
    """Turns a noise predictor ε̂(x, t) into the score −ε̂ / max(σ(t), min_std)."""
    return Partial(_eps_score, _as_partial(eps_fn), sde, jnp.float32(min_std))


def time_grid(sde: VPSDE, n_steps: int, t_min: float = 1e-3) -> jax.Array:
    """Uniform decreasing times T = t₀ > … > t_N = t_min, shape (n_steps + 1,)."""
    return jnp.linspace(sde.T, t_min, n_steps + 1, dtype=jnp.float32)


def _noise(sample_keys, step, shape_tail):
    """Standard normals (B, *shape_tail); row i depends only on (sample_keys[i], step)."""
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, step), shape_tail)
    return jax.vmap(draw)(sample_keys)


def _euler_maruyama_step(score_fn, sde, x, t, t_next, z):
    """x_{t−h} = x + h (½β x + β ∇log p_t(x)) + √(βh) z, with h = t − t_next > 0."""
    h = t - t_next
    tb = jnp.full(x.shape[:1], t)
    beta = sde.beta(t)
    return x + h * beta * (0.5 * x + score_fn(x, tb)) + jnp.sqrt(beta * h) * z


@functools.partial(jax.jit, static_argnames=(
    "shape", "n_steps", "method", "init", "clip", "t_min", "denoise_last", "record_every"))
def _sample(key, score_fn, sde, indices, *, shape, n_steps, method, init, clip, t_min,
            denoise_last, record_every):
    tail = shape[1:]
    sample_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, indices)
    x = _noise(sample_keys, 0, tail)
    if init == "clipped":
        x = jnp.clip(x, -1.0, 1.0)
    ts = time_grid(sde, n_steps, t_min)
    n_slots = -(-n_steps // record_every) + 1 if record_every else 0
    traj = jnp.zeros((n_slots,) + shape, x.dtype).at[0].set(x) if record_every else None

    def body(carry, i):
        x, traj = carry
        z = _noise(sample_keys, i + 1, tail)
        if denoise_last:
            z = jnp.where(i == n_steps - 1, 0.0, z)
        x = _euler_maruyama_step(score_fn, sde, x, ts[i], ts[i + 1], z)
        if clip is not None:
            x = jnp.clip(x, -clip, clip)
        if record_every:
            # Slot j ends up holding the state after step min(j·k, n_steps).
            traj = jax.lax.dynamic_update_index_in_dim(traj, x, (i + record_every) // record_every, 0)
        return (x, traj), None

    (x, traj), _ = jax.lax.scan(body, (x, traj), jnp.arange(n_steps))
    return (x, traj) if record_every else x


def sample(key: jax.Array, score_fn, sde: VPSDE, shape, *, n_steps: int,
           method: str = "euler_maruyama", init: str = "prior", clip: float | None = 10.0,
           t_min: float = 1e-3, denoise_last: bool = True, record_every: int | None = None,
           indices=None):
    """Draws samples by integrating the reverse-time SDE from T to t_min.

    Args:
      key: a typed PRNG key (`jax.random.key`).
      score_fn: x (B, ...), t (B,) ↦ score (B, ...). Pass a `jax.tree_util.Partial`
        (as every builder in jaxguide returns) so that its arrays are traced, not baked in.
      sde: the forward SDE.
      shape: (B, ...) of the batch; static.
      n_steps: number of reverse steps (network evaluations); static.
      method: "euler_maruyama".
      init: "prior" (x_T ~ N(0, I)) or "clipped" (the tutorial's clip(N(0, I), −1, 1)).
      clip: clip each state to [−clip, clip] (the tutorial uses 10), or None.
      t_min: the last time of the grid, in (0, T).
      denoise_last: take the last step without noise.
      record_every: if k, also return the trajectory (ceil(n_steps / k) + 1, B, ...):
        the initial state, every k-th state and the final state.
      indices: (B,) global sample indices for the per-sample noise; default arange(B).

    Returns:
      x (B, ...) at t_min, or (x, trajectory) when `record_every` is given.
    """
    shape = _check_shape(shape)
    n_steps = _check_positive_int("n_steps", n_steps)
    if method not in METHODS:
        raise ValueError(f"method: got {method!r}, accepted {', '.join(METHODS)}")
    if init not in INITS:
        raise ValueError(f"init: got {init!r}, accepted {', '.join(INITS)}")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"clip: got {clip!r}, accepted a number > 0 or None")
    if not (isinstance(t_min, (int, float)) and 0 < t_min < sde.T):
        raise ValueError(f"t_min: got {t_min!r}, accepted (0, T={sde.T})")
    if record_every is not None:
        record_every = _check_positive_int("record_every", record_every)
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise TypeError(f"key: expected a typed key from jax.random.key(seed), got {type(key).__name__}")
    if indices is None:
        indices = jnp.arange(shape[0], dtype=jnp.uint32)
    elif jnp.shape(indices) != shape[:1]:
        raise ValueError(f"indices: expected shape {shape[:1]}, got {jnp.shape(indices)}")
    return _sample(key, _as_partial(score_fn), sde, jnp.asarray(indices, jnp.uint32),
                   shape=shape, n_steps=n_steps, method=method, init=init,
                   clip=None if clip is None else float(clip), t_min=float(t_min),
                   denoise_last=bool(denoise_last), record_every=record_every)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: got {value!r}, accepted an integer >= 1")
    return value


def _check_shape(shape):
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape: got {shape!r}, accepted a tuple of positive integers (B, ...)")
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape: got {shape!r}, accepted a tuple of positive integers (B, ...)")
    return shape
