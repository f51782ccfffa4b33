"""The variance-preserving SDE (Song et al., 2021) with a linear β schedule.

    dx = -½ β(t) x dt + √β(t) dw,      β(t) = β_min + t (β_max − β_min),  t ∈ [0, T].

Its marginal is x_t = m(t) x₀ + σ(t) ε with m(t) = exp(−½∫₀ᵗβ) and σ(t)² = 1 − m(t)².
Times `t` have shape (B,) (or are scalars) and broadcast over the trailing dims of `x`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxguide.checks import (check_array, check_batch, check_float_dtype, check_key,
                             check_schedule, check_schedule_field, check_shape, check_times,
                             invalid)


def times_checked(closed_form):
    """A closed form f(self, t) whose times are checked (real, >= 0 when concrete) first."""

    @functools.wraps(closed_form)
    def checked(self, t):
        check_times(t)
        return closed_form(self, t)

    return checked


@struct.dataclass
class VPSDE:
    """Linear-schedule VP-SDE. Hashable and static: its fields are compile-time constants.

    The closed forms (`beta`, `std`, …) take times t >= 0, `marginal` t in [0, T]; concrete
    times outside are errors (traced ones cannot be checked).
    """

    beta_min: float = struct.field(pytree_node=False, default=0.01)
    beta_max: float = struct.field(pytree_node=False, default=10.0)
    T: float = struct.field(pytree_node=False, default=1.0)

    def __post_init__(self):
        for name in ("beta_min", "beta_max", "T"):  # NumPy scalars too; JSON-friendly.
            object.__setattr__(self, name, check_schedule_field(name, getattr(self, name)))
        check_schedule(self.beta_min, self.beta_max, self.T)

    @times_checked
    def beta(self, t):
        """β(t), same shape as t."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    @times_checked
    def integral_beta(self, t):
        """∫₀ᵗ β(s) ds, same shape as t."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def mean_coeff(self, t):
        """m(t) = exp(−½∫₀ᵗβ), same shape as t."""
        return jnp.exp(-0.5 * self.integral_beta(t))

    def std(self, t):
        """σ(t) = √(1 − m(t)²), same shape as t (accurate for small t via expm1)."""
        return jnp.sqrt(-jnp.expm1(-self.integral_beta(t)))

    def log_snr(self, t):
        """λ(t) = log(m(t) / σ(t)), decreasing in t, same shape as t."""
        b = self.integral_beta(t)
        return -0.5 * b - 0.5 * jnp.log(-jnp.expm1(-b))

    def t_of_log_snr(self, lam):
        """The inverse of `log_snr`: solves ∫₀ᵗβ = log(1 + e^{−2λ}) for t."""
        b = jnp.logaddexp(0.0, -2.0 * lam)
        slope = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * b))

    def drift(self, x, t):
        """f(x, t) = −½ β(t) x; x (B, ...), t (B,) → (B, ...)."""
        check_array("x", x)
        return -0.5 * per_example(self.beta(t), x) * x

    def diffusion(self, t):
        """g(t) = √β(t), same shape as t."""
        return jnp.sqrt(self.beta(t))

    def marginal(self, key: jax.Array, x0: jax.Array, t):
        """Samples x_t ~ p(x_t | x₀). x0 (B, ...) floating, t () or (B,) in [0, T] → (x_t, ε),
        both (B, ...)."""
        check_key(key)
        x0 = jnp.asarray(x0)
        check_float_dtype("x0", x0.dtype)
        if x0.ndim < 1:
            raise invalid("x0", f"shape {x0.shape}", "(B, ...)")
        check_batch("t", t, x0)
        check_times(t, self.T)
        noise = jax.random.normal(key, x0.shape, x0.dtype)
        x_t = per_example(self.mean_coeff(t), x0) * x0 + per_example(self.std(t), x0) * noise
        return x_t, noise

    def prior(self, key: jax.Array, shape, dtype=jnp.float32):
        """A sample of the terminal distribution N(0, I) (exact up to m(T)² ≈ 0)."""
        check_key(key)
        check_float_dtype("dtype", dtype)
        shape = check_shape(shape)
        return jax.random.normal(key, shape, dtype)


def check_sde(sde) -> None:
    """Samplers and scores integrate a `VPSDE` (its closed forms and static fields)."""
    if not isinstance(sde, VPSDE):
        raise invalid("sde", type(sde).__name__, "a jaxguide.VPSDE", TypeError)


def per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes per-example values (B,) (or a scalar) to broadcast against x (B, ...)."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))
