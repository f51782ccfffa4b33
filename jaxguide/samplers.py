"""Reverse-time samplers for the VP-SDE: each is one `lax.scan` under `jit`.

Methods (NFE = network evaluations per step):
* "euler_maruyama" (1): the reverse SDE, x ← x + h(½βx + β∇log p) + √(βh) z;
* "predictor_corrector" (2): Euler–Maruyama + one Langevin corrector step of size
  2 (snr σ(t))² (Song et al., 2021);
* "heun" (2): the probability-flow ODE with Heun's 2nd-order method;
* "dpm_solver_2m" (1): DPM-Solver++(2M) (Lu et al., 2022), a 2nd-order multistep solver of
  the probability-flow ODE in the data-prediction parameterisation;
* "dpm_solver_2m_sde" (1): its stochastic form, SDE-DPM-Solver++(2M): the same multistep
  data prediction, integrated exactly along the reverse SDE's linear part, with fresh noise
  every step (so, like Euler–Maruyama, it reaches the guided distribution);
* "dpm_solver_3m_sde" (1): SDE-DPM-Solver++(3M), the same with the data prediction
  extrapolated from the last three (3rd order, as k-diffusion's `sample_dpmpp_3m_sde`).
All take any score_fn, guided ones included: a guided score is the score of the guided
noise prediction ε̃ = ε̂ − s σ(t) ∇ₓ log q, which is what DPM-Solver integrates.

The time grid runs from T down to `t_min` in `n_steps` steps: uniform in t, quadratic
(denser near t_min), or uniform in log-SNR. Randomness is per sample: image i draws its
noise from `fold_in(key, indices[i])`, so it does not depend on the batch it is in.
Shapes: score_fn(x, t) with x (B, ...) and t (B,) → (B, ...).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxguide import parallel
from jaxguide.checks import (INT32_MAX, check_bool, check_choice, check_int, check_key,
                             check_number, check_output, check_shape, invalid, is_concrete)
from jaxguide.compiler import jit
from jaxguide.scores import as_partial
from jaxguide.sde import VPSDE, check_sde

NFE_PER_STEP = {"euler_maruyama": 1, "predictor_corrector": 2, "heun": 2, "dpm_solver_2m": 1,
                "dpm_solver_2m_sde": 1, "dpm_solver_3m_sde": 1}
METHODS = tuple(NFE_PER_STEP)
GRIDS = ("uniform", "quadratic", "logsnr")
INITS = ("prior", "clipped")
T_MIN_FRACTION = 1e-5  # the smallest t_min, as a fraction of T (see `sample`)
DEFAULT_GRID = {"euler_maruyama": "uniform", "predictor_corrector": "uniform", "heun": "quadratic",
                "dpm_solver_2m": "logsnr", "dpm_solver_2m_sde": "logsnr",
                "dpm_solver_3m_sde": "logsnr"}


def time_grid(sde: VPSDE, n_steps: int, t_min: float = 1e-3, kind: str = "uniform") -> jax.Array:
    """Decreasing times T = t₀ > … > t_N = t_min, shape (n_steps + 1,).

    n_steps >= 1; t_min in [1e-5·T, T) (see `sample`; checked when concrete); kind one of
    GRIDS.
    """
    check_sde(sde)
    n_steps = _check_n_steps(n_steps)
    if is_concrete(t_min):
        t_min = _check_t_min(sde, t_min)
    check_choice("kind", kind, GRIDS)
    u = jnp.linspace(0.0, 1.0, n_steps + 1, dtype=jnp.float32)
    if kind == "uniform":
        return sde.T + (t_min - sde.T) * u
    if kind == "quadratic":
        return t_min + (sde.T - t_min) * (1.0 - u) ** 2
    if kind == "logsnr":
        lo, hi = sde.log_snr(jnp.float32(sde.T)), sde.log_snr(jnp.float32(t_min))
        ts = sde.t_of_log_snr(lo + (hi - lo) * u)
        return ts.at[0].set(sde.T).at[-1].set(t_min)


def _noise(sample_keys, counter, shape_tail):
    """Standard normals (B, *shape_tail); row i depends only on (sample_keys[i], counter)."""
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, counter), shape_tail)
    return jax.vmap(draw)(sample_keys)


def _batch_t(t, x):
    return jnp.full(x.shape[:1], t)


def _checked_score(score_fn, x, t):
    """score_fn(x, t), an array of x's shape (checked when traced, not run)."""
    score = score_fn(x, t)
    check_output("score_fn", score, x)
    return score


# Each step maps (score_fn, sde, x, state, t, t_next, noise, last) to (x, state); `noise(j)`
# draws the j-th standard normal of this step, `last` is a traced bool for the final step.

def evaluation_times(sde: VPSDE, n_steps: int, method: str = "euler_maruyama",
                     grid: str | None = None, t_min: float = 1e-3) -> np.ndarray:
    """The times at which `sample` calls score_fn, one per network evaluation, in call order
    per step: (n_steps · NFE_PER_STEP[method],). Two-evaluation steps call it at t and t_next."""
    check_choice("method", method, METHODS)
    ts = np.asarray(time_grid(sde, n_steps, t_min, DEFAULT_GRID[method] if grid is None else grid))
    if NFE_PER_STEP[method] == 1:
        return ts[:-1]
    return np.stack([ts[:-1], ts[1:]], axis=1).ravel()


def _euler_maruyama(score_fn, sde, x, state, t, t_next, noise, last, *, denoise_last, **_):
    """One step back of dx = [f(x, t) − g(t)² ∇log p_t(x)] dt + g(t) dw̄, from t to t_next."""
    h, g = t - t_next, sde.diffusion(t)
    z = noise(0)
    if denoise_last:
        z = jnp.where(last, 0.0, z)
    x = x - h * (sde.drift(x, t) - g**2 * score_fn(x, _batch_t(t, x))) + g * jnp.sqrt(h) * z
    return x, state


def _predictor_corrector(score_fn, sde, x, state, t, t_next, noise, last, *, snr, **kw):
    x, state = _euler_maruyama(score_fn, sde, x, state, t, t_next, noise, last, **kw)
    # Langevin corrector at t_next. Song et al. size the step 2 (snr ‖z‖ / ‖∇log p‖)² with
    # norms averaged over the batch; for noised data ‖∇log p‖ ≈ ‖z‖ / σ(t), so we use
    # 2 (snr σ(t))²: the same step, but independent of the batch (and stable in low dims).
    eps = 2.0 * (snr * sde.std(t_next)) ** 2
    corrected = x + eps * score_fn(x, _batch_t(t_next, x)) + jnp.sqrt(2.0 * eps) * noise(1)
    return jnp.where(last, x, corrected), state


def _ode_velocity(score_fn, sde, x, t):
    """dx/dt of the probability-flow ODE: f(x, t) − ½ g(t)² ∇log p_t(x)."""
    return sde.drift(x, t) - 0.5 * sde.diffusion(t) ** 2 * score_fn(x, _batch_t(t, x))


def _heun(score_fn, sde, x, state, t, t_next, noise, last, **_):
    h = t_next - t
    v = _ode_velocity(score_fn, sde, x, t)
    x_euler = x + h * v
    return x + 0.5 * h * (v + _ode_velocity(score_fn, sde, x_euler, t_next)), state


def _data_prediction(score_fn, sde, x, t, x0_clip):
    """x̂₀ = (x + σ(t)² ∇log p_t(x)) / m(t) (Tweedie): what the DPM-Solver++ steps integrate;
    clipped to [−x0_clip, x0_clip] unless x0_clip is None."""
    x0 = (x + sde.std(t) ** 2 * score_fn(x, _batch_t(t, x))) / sde.mean_coeff(t)
    return x0 if x0_clip is None else jnp.clip(x0, -x0_clip, x0_clip)


def _dpm_solver_2m(score_fn, sde, x, state, t, t_next, noise, last, *, x0_clip, **_):
    x0_prev, h_prev = state
    sigma, alpha_next, sigma_next = sde.std(t), sde.mean_coeff(t_next), sde.std(t_next)
    h = sde.log_snr(t_next) - sde.log_snr(t)
    x0 = _data_prediction(score_fn, sde, x, t, x0_clip)
    r = h_prev / h
    x0_2nd = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    # First order at the first step (no history) and at the last step (more stable).
    d = jnp.where((h_prev > 0) & ~last, x0_2nd, x0)
    x = (sigma_next / sigma) * x + alpha_next * (-jnp.expm1(-h)) * d
    return x, (x0, h)


def _dpm_solver_2m_sde(score_fn, sde, x, state, t, t_next, noise, last, *, denoise_last,
                       x0_clip, **_):
    """x_next = (σ'/σ) e^{−h} x + m' (1 − e^{−2h}) (D₀ + ½ D₁) + σ' √(1 − e^{−2h}) z, with
    h = λ(t') − λ(t), D₀ the data prediction and D₁ = (D₀ − D₀_prev) / r its change."""
    x0_prev, h_prev = state
    sigma, alpha_next, sigma_next = sde.std(t), sde.mean_coeff(t_next), sde.std(t_next)
    h = sde.log_snr(t_next) - sde.log_snr(t)
    x0 = _data_prediction(score_fn, sde, x, t, x0_clip)
    r = h_prev / h
    d1 = jnp.where((h_prev > 0) & ~last, (x0 - x0_prev) / r, 0.0)  # First order at both ends.
    z = noise(0)
    if denoise_last:
        z = jnp.where(last, 0.0, z)
    decay = -jnp.expm1(-2.0 * h)  # 1 − e^{−2h}
    x = ((sigma_next / sigma) * jnp.exp(-h) * x + alpha_next * decay * (x0 + 0.5 * d1)
         + sigma_next * jnp.sqrt(decay) * z)
    return x, (x0, h)


def _dpm_solver_3m_sde(score_fn, sde, x, state, t, t_next, noise, last, *, denoise_last,
                       x0_clip, **_):
    """In u = x / m(t), with h = λ(t') − λ(t) and k = 2h:
    u' = e^{−k} u + (1 − e^{−k}) D₀ + φ₂ D₁ − φ₃ D₂ + e^{−λ(t')} √(1 − e^{−k}) z,
    φ₂ = 1 − (1 − e^{−k}) / k, φ₃ = φ₂ / k − ½, where D₀ is the data prediction and D₁, D₂
    its first and second differences over the last three steps (scaled by their h)."""
    x0_1, x0_2, h_1, h_2 = state
    alpha_next, sigma_next = sde.mean_coeff(t_next), sde.std(t_next)
    h = sde.log_snr(t_next) - sde.log_snr(t)
    x0 = _data_prediction(score_fn, sde, x, t, x0_clip)
    decay = -jnp.expm1(-2.0 * h)  # 1 − e^{−k}
    u = (1.0 - decay) * x / sde.mean_coeff(t) + decay * x0
    phi2 = 1.0 - decay / (2.0 * h)
    phi3 = phi2 / (2.0 * h) - 0.5
    r0, r1 = jnp.where(h_1 > 0, h_1 / h, 1.0), jnp.where(h_2 > 0, h_2 / h, 1.0)
    d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
    third = phi2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi3 * (d1_0 - d1_1) / (r0 + r1)
    # First order at the first and the last step, second order at the second.
    u = u + jnp.where(last, 0.0, jnp.where(h_2 > 0, third, jnp.where(h_1 > 0, phi2 * d1_0, 0.0)))
    z = noise(0)
    if denoise_last:
        z = jnp.where(last, 0.0, z)
    return alpha_next * u + sigma_next * jnp.sqrt(decay) * z, (x0, x0_1, h, h_1)


def _initial_state(method, x):
    """The solver's memory before the first step: the last data predictions and their h."""
    zero = jnp.float32(0.0)
    if method == "dpm_solver_3m_sde":
        return jnp.zeros_like(x), jnp.zeros_like(x), zero, zero
    return (jnp.zeros_like(x), zero) if method.startswith("dpm_solver") else ()


_STEPS = {"euler_maruyama": _euler_maruyama, "predictor_corrector": _predictor_corrector,
          "heun": _heun, "dpm_solver_2m": _dpm_solver_2m, "dpm_solver_2m_sde": _dpm_solver_2m_sde,
          "dpm_solver_3m_sde": _dpm_solver_3m_sde}


_STATIC_ARGNAMES = ("shape", "n_steps", "method", "init", "clip", "x0_clip", "denoise_last",
                    "snr", "record_every", "mesh")


@functools.partial(jit, static_argnames=_STATIC_ARGNAMES)
def _sample(key, score_fn, sde, indices, ts, *, shape, n_steps, method, init, clip, x0_clip,
            denoise_last, snr, record_every, mesh):
    tail = shape[1:]
    sample_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, indices)
    x = parallel.constrain_batch(_noise(sample_keys, 0, tail), mesh)
    if init == "clipped":
        x = jnp.clip(x, -1.0, 1.0)
    score_fn = functools.partial(_checked_score, score_fn)
    step_fn = functools.partial(_STEPS[method], denoise_last=denoise_last, snr=snr,
                                x0_clip=x0_clip)
    state = _initial_state(method, x)
    n_slots = -(-n_steps // record_every) + 1 if record_every else 0
    traj = jnp.zeros((n_slots,) + shape, x.dtype).at[0].set(x) if record_every else None

    def body(carry, i):
        x, state, traj = carry
        noise = lambda j: _noise(sample_keys, 2 * i + 1 + j, tail)
        x, state = step_fn(score_fn, sde, x, state, ts[i], ts[i + 1], noise, i == n_steps - 1)
        if clip is not None:
            x = jnp.clip(x, -clip, clip)
        x = parallel.constrain_batch(x, mesh)
        if record_every:
            # Slot j ends up holding the state after step min(j·k, n_steps): step i + 1
            # writes slot ceil((i + 1) / k) (written so that it cannot overflow int32).
            traj = jax.lax.dynamic_update_index_in_dim(traj, x, i // record_every + 1, 0)
        return (x, state, traj), None

    (x, _, traj), _ = jax.lax.scan(body, (x, state, traj), jnp.arange(n_steps))
    return (x, parallel.constrain_batch(traj, mesh, axis=1)) if record_every else x


def sample(key: jax.Array, score_fn, sde: VPSDE, shape, *, n_steps: int,
           method: str = "euler_maruyama", grid: str | None = None, init: str = "prior",
           clip: float | None = 10.0, x0_clip: float | None = None, t_min: float = 1e-3,
           denoise_last: bool = True, snr: float = 0.16, record_every: int | None = None,
           indices=None, mesh: Mesh | None = None):
    """Draws samples by integrating the reverse-time SDE (or its probability-flow ODE).

    Args:
      key: a typed PRNG key (`jax.random.key`).
      score_fn: x (B, ...), t (B,) ↦ score (B, ...). Pass a `jax.tree_util.Partial`
        (as every builder in jaxguide returns) so that its arrays are traced, not baked in.
      sde: the forward SDE.
      shape: (B, ...) of the batch; static.
      n_steps: number of steps; static. Network evaluations: n_steps · NFE_PER_STEP[method].
      method: one of METHODS.
      grid: "uniform", "quadratic" or "logsnr" (default: DEFAULT_GRID[method]).
      init: "prior" (x_T ~ N(0, I)) or "clipped" (the tutorial's clip(N(0, I), −1, 1)).
      clip: clip each state to [−clip, clip] (the tutorial uses 10), or None; clip >= 1,
        so that the data range [−1, 1] is kept.
      x0_clip: the data-prediction solvers ("dpm_solver_*") clip their prediction x̂₀ to
        [−x0_clip, x0_clip] (the data's range: static thresholding), or not (None). Under
        strong guidance, few steps extrapolate an unclipped x̂₀ far out of range.
      t_min: the last time of the grid, in [1e-5·T, T). Far below, float32 cannot resolve
        the uniform grid's end T + (t_min − T): it is 0.3% off at 1e-5·T, 0 under 3e-8·T.
      denoise_last: stochastic methods take the last step without noise.
      snr: signal-to-noise ratio of the Langevin corrector ("predictor_corrector"), in (0, 1].
        Its step 2 (snr σ)² is stable for snr <= 1, as the score's curvature is at most 1/σ²;
        a larger snr diverges.
      record_every: if k, also return the trajectory (ceil(n_steps / k) + 1, B, ...):
        the initial state, every k-th state and the final state.
      indices: (B,) global sample indices for the per-sample noise; default arange(B).
      mesh: split the batch over this mesh's "data" axis (`parallel.make_mesh`); B must be
        a multiple of its size. Image i is the same on any number of devices.

    Returns:
      x (B, ...) at t_min, or (x, trajectory) when `record_every` is given.
    """
    (score_fn, shape, n_steps, grid, clip, x0_clip, t_min, denoise_last, snr, record_every,
     indices) = _check_sample_args(key, score_fn, sde, shape, n_steps, method, grid, init, clip,
                                   x0_clip, t_min, denoise_last, snr, record_every, indices, mesh)
    # The grid is made here, outside jit, so that it is bitwise `evaluation_times`'s.
    ts = time_grid(sde, n_steps, t_min, grid)
    if mesh is not None:
        key, score_fn, ts = parallel.replicate(mesh, (key, score_fn, ts))
        indices = parallel.shard_batch(mesh, indices)
    return _sample(key, score_fn, sde, indices, ts, shape=shape, n_steps=n_steps, method=method,
                   init=init, clip=clip, x0_clip=x0_clip, denoise_last=denoise_last, snr=snr,
                   record_every=record_every, mesh=mesh)


def _check_sample_args(key, score_fn, sde, shape, n_steps, method, grid, init, clip, x0_clip,
                       t_min, denoise_last, snr, record_every, indices, mesh):
    """`sample`'s arguments checked, as the values `_sample` takes (static ones as Python
    numbers, grid resolved, indices as an int32 array)."""
    check_key(key)
    score_fn = as_partial(score_fn, "score_fn")
    check_sde(sde)
    shape = check_shape(shape)
    n_steps = _check_n_steps(n_steps)
    check_choice("method", method, METHODS)
    grid = check_choice("grid", DEFAULT_GRID[method] if grid is None else grid, GRIDS)
    check_choice("init", init, INITS)
    if clip is not None:  # States span at least the data range [-1, 1].
        clip = check_number("clip", clip, "a number >= 1 or None", lambda v: v >= 1)
    if x0_clip is not None:
        x0_clip = check_number("x0_clip", x0_clip, "a number > 0 or None", lambda v: v > 0)
    t_min = _check_t_min(sde, t_min)
    denoise_last = check_bool("denoise_last", denoise_last)
    snr = check_number("snr", snr, "a number in (0, 1]", lambda v: 0 < v <= 1)
    if record_every is not None:
        record_every = check_int("record_every", record_every, 1, INT32_MAX)
    indices = _check_indices(indices, shape[0])
    if mesh is not None and not isinstance(mesh, Mesh):
        raise invalid("mesh", type(mesh).__name__, "a jax.sharding.Mesh (make_mesh)", TypeError)
    if mesh is not None:
        parallel.check_divisible("batch size (shape[0])", shape[0], mesh)
    return (score_fn, shape, n_steps, grid, clip, x0_clip, t_min, denoise_last, snr, record_every,
            indices)


def _check_indices(indices, batch: int) -> jax.Array:
    """The (batch,) global sample indices as uint32 (default arange(batch)); concrete ones must
    be integers in 0..2^32-1."""
    if indices is None:
        return jnp.arange(batch, dtype=jnp.uint32)
    dtype = np.dtype(indices.dtype if hasattr(indices, "dtype") else np.asarray(indices).dtype)
    if np.shape(indices) != (batch,) or dtype.kind not in "iu":
        raise invalid("indices", f"{dtype} of shape {np.shape(indices)}", f"({batch},) integers")
    if is_concrete(indices) and not 0 <= np.min(indices) <= np.max(indices) <= 2**32 - 1:
        raise invalid("indices", str(np.asarray(indices).tolist())[:80], "integers in 0..2^32-1")
    return jnp.asarray(indices, jnp.uint32)


def _check_n_steps(n_steps) -> int:
    return check_int("n_steps", n_steps, 1, INT32_MAX - 1)  # n_steps + 1 int32 times.


def _check_t_min(sde: VPSDE, t_min) -> float:
    """t_min as a float in [T_MIN_FRACTION·T, T)."""
    lo = T_MIN_FRACTION * sde.T
    return check_number("t_min", t_min, f"[{lo:g}, T={sde.T:g})", lambda v: lo <= v < sde.T)
