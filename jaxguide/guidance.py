"""Classifier guidance: Bayes' rule turns a noisy classifier into a score correction.

    ∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log q(y | x, t).

Every object here is a `jax.tree_util.Partial`: a function that is also a pytree whose
leaves (network parameters, labels, scales) are traced by `jit`. Changing labels or a
scale therefore never recompiles a sampler. Scores compose by addition (`add_scores`).

Shapes: x (B, ...), t (B,), labels () or (B,) int, scale () or (B,) float,
log_prob_fn(x, t) -> (B, K) per-class log-probabilities, log_density_fn(x, t) -> (B,).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxguide.sde import _expand


def _sum_of(fns, x, t):
    out = fns[0](x, t)
    for fn in fns[1:]:
        out = out + fn(x, t)
    return out


def add_scores(*score_fns) -> Partial:
    """Returns the score function x, t ↦ Σᵢ score_fnᵢ(x, t)."""
    if not score_fns:
        raise ValueError("add_scores: needs at least one score function")
    return Partial(_sum_of, tuple(_as_partial(f) for f in score_fns))


def _check_batch(name, value, x):
    """A per-example value must be () or (B,) for x (B, ...): checked when traced."""
    if jnp.ndim(value) > 1 or (jnp.ndim(value) == 1 and jnp.shape(value)[0] != x.shape[0]):
        raise ValueError(f"{name}: got shape {jnp.shape(value)} for a batch of {x.shape[0]} "
                         f"images, accepted () or ({x.shape[0]},)")


def _label_log_prob(log_prob_fn, labels, x, t):
    _check_batch("labels", labels, x)
    log_probs = log_prob_fn(x, t)
    labels = jnp.broadcast_to(labels, log_probs.shape[:1])
    return jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]


def label_log_prob(log_prob_fn, labels) -> Partial:
    """The log-density x, t ↦ log q(labels | x, t), shape (B,)."""
    return Partial(_label_log_prob, _as_partial(log_prob_fn), jnp.asarray(labels, jnp.int32))


def _density_grad(log_density_fn, x, t):
    # One backward pass: examples are independent, so ∇ of the sum is the per-example ∇.
    return jax.grad(lambda x: jnp.sum(log_density_fn(x, t)))(x)


def density_grad(log_density_fn) -> Partial:
    """x, t ↦ ∇ₓ log_density_fn(x, t), shape (B, ...), via `jax.grad` of the batch sum."""
    return Partial(_density_grad, _as_partial(log_density_fn))


def classifier_grad(log_prob_fn, labels) -> Partial:
    """x, t ↦ ∇ₓ log q(labels | x, t), shape (B, ...)."""
    return density_grad(label_log_prob(log_prob_fn, labels))


def _scaled(fn, scale, x, t):
    _check_batch("scale", scale, x)
    return _expand(scale, x) * fn(x, t)


def guidance_term(log_density_fn, scale) -> Partial:
    """The score term x, t ↦ scale · ∇ₓ log_density_fn(x, t); scale () or (B,)."""
    scale = _check_scale(scale)
    return Partial(_scaled, density_grad(log_density_fn), scale)


def classifier_guidance(score_fn, log_prob_fn, labels, scale, *, num_classes: int | None = None
                        ) -> Partial:
    """The guided score x, t ↦ score_fn(x, t) + scale · ∇ₓ log q(labels | x, t).

    Args:
      score_fn: x (B, ...), t (B,) ↦ ∇ₓ log p_t(x), shape (B, ...).
      log_prob_fn: x, t ↦ per-class log-probabilities (B, K).
      labels: target classes, () or (B,) integers in [0, K).
      scale: guidance scale s ≥ 0, () or (B,).
      num_classes: K, if known: labels are then checked against it.
    """
    labels = _check_labels(labels, num_classes)
    term = guidance_term(label_log_prob(log_prob_fn, labels), scale)
    return add_scores(score_fn, term)


def _as_partial(fn) -> Partial:
    if isinstance(fn, Partial):
        return fn
    if not callable(fn):
        raise TypeError(f"expected a function of (x, t), got {type(fn).__name__}")
    return Partial(fn)


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _check_labels(labels, num_classes):
    if _is_concrete(labels):
        arr = np.asarray(labels)
        if arr.ndim > 1 or not np.issubdtype(arr.dtype, np.integer) and not (
                np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise ValueError(f"labels must be integers of shape () or (B,), got {arr.dtype}{arr.shape}")
        hi = num_classes if num_classes is not None else math.inf
        if arr.size and (arr.min() < 0 or arr.max() >= hi):
            bad = arr[(arr < 0) | (arr >= hi)].ravel()[0]
            accepted = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
            raise ValueError(f"labels: got {bad}, accepted {accepted}")
    return jnp.asarray(labels, jnp.int32)


def _check_scale(scale):
    if _is_concrete(scale):
        arr = np.asarray(scale, dtype=np.float64)
        if arr.ndim > 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(
                f"scale: got {scale!r}, accepted a finite number >= 0 (a scalar or one per example)")
    return jnp.asarray(scale, jnp.float32)
