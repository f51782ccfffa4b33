"""Scores and guidance: a noise predictor's score, and two ways to condition it on a class.

    score from a noise predictor:  ∇ₓ log p_t(x) ≈ −ε̂(x, t) / σ(t)
    classifier guidance (Bayes):   ∇ₓ log p_t(x | y) = ∇ₓ log p_t(x) + ∇ₓ log q(y | x, t)
    classifier-free guidance:      ε̃ = (1 + w) ε̂(x, t, y) − w ε̂(x, t, ∅)

Every object here is a `jax.tree_util.Partial`: a function that is also a pytree whose
leaves (network parameters, labels, scales) are traced by `jit`. Changing labels or a
scale therefore never recompiles a sampler. Scores compose by addition (`add_scores`).

Shapes: x (B, ...), t (B,), labels () or (B,) int, scale () or (B,) float,
log_prob_fn(x, t) -> (B, K) per-class log-probabilities, log_density_fn(x, t) -> (B,),
eps_fn(x, t[, y]) -> (B, ...) noise predictions (y (B,) int, K the null class ∅).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxguide.checks import (F32_TINY, check_batch, check_float_array, check_interval,
                             check_num_classes, check_number, check_output, check_scale,
                             check_target_labels, invalid)
from jaxguide.sde import VPSDE, check_sde, per_example


@functools.lru_cache(maxsize=None)
def _bound(fn, *static):
    """functools.partial(fn, *static), one object per (fn, static): Partials built on it
    with the same static values have the same pytree structure (so `jit` does not retrace)."""
    return functools.partial(fn, *static)


def _eps_score(eps_fn, sde, min_std, x, t):
    check_float_array("x", x)
    check_batch("t", t, x)
    eps = eps_fn(x, t)
    check_output("eps_fn", eps, x)
    return -eps / per_example(jnp.maximum(sde.std(t), min_std), x)


def score_from_eps(eps_fn, sde: VPSDE, min_std: float = 0.01) -> Partial:
    """Turns a noise predictor ε̂(x, t) into the score −ε̂ / max(σ(t), min_std).

    min_std is a number in [1.2e-38, 1] (positive in float32; σ(t) <= 1, so a larger floor
    would replace σ everywhere).
    """
    check_sde(sde)
    check_number("min_std", min_std, "a number in [1.2e-38, 1]", lambda v: F32_TINY <= v <= 1)
    return Partial(_eps_score, as_partial(eps_fn, "eps_fn"), sde, jnp.float32(min_std))


def _free_guided_eps(null_class, eps_fn, labels, scale, lo, hi, x, t):
    b = x.shape[0]
    labels = jnp.broadcast_to(labels, (b,))
    # A traced w cannot raise when negative: it makes its images NaN instead.
    w = jnp.where((t >= lo) & (t <= hi), jnp.where(scale >= 0, scale, jnp.nan), 0.0)

    def guided():
        y = jnp.concatenate([labels, jnp.full((b,), null_class, jnp.int32)])
        eps = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)  # One call of 2B.
        cond, uncond = eps[:b], eps[b:]
        return (cond + per_example(w, x) * (cond - uncond)).astype(cond.dtype)

    # lax.cond: where no example is guided (w = 0, or t outside the interval) the
    # unconditional prediction is not computed at all.
    return jax.lax.cond(jnp.any(w != 0), guided, lambda: eps_fn(x, t, labels))


def classifier_free_guidance(eps_fn, sde: VPSDE, labels, scale, *, num_classes: int | None = None,
                             interval=None, min_std: float = 0.01) -> Partial:
    """The guided score of a class-conditional noise predictor (Ho & Salimans, 2022):
    −ε̃ / max(σ(t), min_std) with ε̃ = (1 + w) ε̂(x, t, y) − w ε̂(x, t, ∅).

    Args:
      eps_fn: x (B, ...), t (B,), y (B,) ↦ ε̂ (B, ...), y in 0..K with K the null class ∅
        (a conditional `UNet` through `jaxguide.nets.apply_fn`).
      labels: target classes, () or (B,) integers in [0, K).
      scale: the guidance weight w ≥ 0, () or (B,); 0 is the conditional model alone.
      num_classes: K; by default eps_fn's model's `num_classes`.
      interval: (t_lo, t_hi) to guide only for t_lo <= t <= t_hi (Kynkäänniemi et al., 2024);
        outside, w = 0. None: at every t. The bounds are traced.
    The two predictions are one network call on a batch of 2B (B where no example is
    guided); labels, w and the interval are traced.
    """
    num_classes = check_num_classes(num_classes, eps_fn)
    if num_classes is None:  # K, the null class of a class-conditional noise predictor.
        raise invalid("num_classes", "None (eps_fn's model has none)", "an integer K >= 1")
    eps = Partial(_bound(_free_guided_eps, num_classes), as_partial(eps_fn, "eps_fn"),
                  check_target_labels(labels, num_classes), check_scale(scale),
                  *check_interval((0.0, np.inf) if interval is None else interval))
    return score_from_eps(eps, sde, min_std)


def _sum_of(names, fns, x, t):
    check_float_array("x", x)
    out = 0.0
    for name, fn in zip(names, fns):
        term = fn(x, t)
        check_output(name, term, x)  # A term of another shape would broadcast.
        out = out + term
    return out


def _add(named_fns: dict[str, object]) -> Partial:
    fns = tuple(as_partial(f, name) for name, f in named_fns.items())
    return Partial(_bound(_sum_of, tuple(named_fns)), fns)


def add_scores(*score_fns) -> Partial:
    """Returns the score function x, t ↦ Σᵢ score_fnᵢ(x, t); each term of x's shape."""
    if not score_fns:
        raise invalid("score_fns", "none", "at least one score function")
    return _add({f"score_fns[{i}]": f for i, f in enumerate(score_fns)})


def _label_log_prob(num_classes, log_prob_fn, labels, x, t):
    check_batch("labels", labels, x)
    log_probs = log_prob_fn(x, t)
    shape = jnp.shape(log_probs)
    k = num_classes or (shape[1] if len(shape) == 2 else None)  # Labels were checked against it.
    if shape != (x.shape[0], k) or not k:
        raise ValueError(f"log_prob_fn: returned shape {shape} for x of shape {x.shape}, "
                         f"accepted ({x.shape[0]}, {k or 'K'}) per-class log-probabilities")
    labels = jnp.broadcast_to(labels, log_probs.shape[:1])
    picked = jnp.take_along_axis(log_probs, jnp.clip(labels, 0, k - 1)[:, None], axis=1)[:, 0]
    # Labels are traced, so a label outside [0, K) cannot raise here (an out-of-range gather
    # would just drop the gradient, and so the guidance). It makes the value and the gradient
    # with respect to every pixel of its image NaN instead; other images are unchanged.
    nan_if_bad = jnp.where((labels >= 0) & (labels < k), 0.0, jnp.nan)
    return picked + nan_if_bad * jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def label_log_prob(log_prob_fn, labels, *, num_classes: int | None = None) -> Partial:
    """The log-density x, t ↦ log q(labels | x, t), shape (B,).

    Labels are checked against num_classes, or the classes of log_prob_fn's model when it was
    made by `jaxguide.nets.apply_fn`; a label found out of range only when traced gives NaN.
    """
    num_classes = check_num_classes(num_classes, log_prob_fn)
    return Partial(_bound(_label_log_prob, num_classes), as_partial(log_prob_fn, "log_prob_fn"),
                   check_target_labels(labels, num_classes))


def _checked_density(log_density_fn, x, t):
    """log_density_fn(x, t), which must be one value per example, (B,)."""
    out = log_density_fn(x, t)
    if jnp.shape(out) != x.shape[:1]:  # Per-class log-probabilities: classifier_guidance.
        raise ValueError(f"log_density_fn: returned shape {jnp.shape(out)} for x of shape "
                         f"{x.shape}, accepted ({x.shape[0]},): one log-density per example")
    return out


def _density_grad(log_density_fn, x, t):
    check_float_array("x", x)  # jax.grad needs it.
    # One backward pass: examples are independent, so ∇ of the sum is the per-example ∇.
    return jax.grad(lambda x: jnp.sum(_checked_density(log_density_fn, x, t)))(x)


def density_grad(log_density_fn) -> Partial:
    """x, t ↦ ∇ₓ log_density_fn(x, t), shape (B, ...), via `jax.grad` of the batch sum."""
    return Partial(_density_grad, as_partial(log_density_fn, "log_density_fn"))


def classifier_grad(log_prob_fn, labels, *, num_classes: int | None = None) -> Partial:
    """x, t ↦ ∇ₓ log q(labels | x, t), shape (B, ...); labels as in `label_log_prob`."""
    return density_grad(label_log_prob(log_prob_fn, labels, num_classes=num_classes))


def _scaled(fn, scale, x, t):
    check_batch("scale", scale, x)
    # A traced scale cannot raise when negative: it makes its images NaN instead.
    scale = jnp.where(scale >= 0, scale, jnp.nan)
    return per_example(scale, x) * fn(x, t)


def guidance_term(log_density_fn, scale) -> Partial:
    """The score term x, t ↦ scale · ∇ₓ log_density_fn(x, t); scale () or (B,)."""
    scale = check_scale(scale)
    return Partial(_scaled, density_grad(log_density_fn), scale)


def _in_interval(term_fn, lo, hi, x, t):
    inside = (t >= lo) & (t <= hi)
    # lax.cond: outside the interval the term (a classifier's gradient) is not computed at all.
    return jax.lax.cond(jnp.any(inside),
                        lambda: jnp.where(per_example(inside, x), term_fn(x, t), 0.0),
                        lambda: jnp.zeros_like(x))


def classifier_guidance(score_fn, log_prob_fn, labels, scale, *, num_classes: int | None = None,
                        interval=None) -> Partial:
    """The guided score x, t ↦ score_fn(x, t) + scale · ∇ₓ log q(labels | x, t).

    Args:
      score_fn: x (B, ...), t (B,) ↦ ∇ₓ log p_t(x), shape (B, ...).
      log_prob_fn: x, t ↦ per-class log-probabilities (B, K).
      labels: target classes, () or (B,) integers in [0, K).
      scale: guidance scale s ≥ 0, () or (B,); a finite float32 (at most 3.4e38).
      num_classes: K, an integer >= 1. By default the model's `num_classes` when log_prob_fn
        was made by `jaxguide.nets.apply_fn`. Concrete labels are checked against K; labels
        out of range that only show when traced make the score NaN.
      interval: (t_lo, t_hi) to apply the classifier's term only for t_lo <= t <= t_hi
        (outside, the score alone, and the classifier is not run); None: at every t. The
        bounds are traced: changing them does not recompile a sampler.
    """
    score_fn = as_partial(score_fn, "score_fn")
    term = guidance_term(label_log_prob(log_prob_fn, labels, num_classes=num_classes), scale)
    if interval is not None:
        term = Partial(_in_interval, term, *check_interval(interval))
    return _add({"score_fn": score_fn, "guidance term": term})


def as_partial(fn, name) -> Partial:
    """fn as a `Partial` (a pytree, so that `jit` traces its arrays); fn must be callable."""
    if isinstance(fn, Partial):
        return fn
    if not callable(fn):
        raise invalid(name, type(fn).__name__, "a function of (x, t)", TypeError)
    return Partial(fn)
