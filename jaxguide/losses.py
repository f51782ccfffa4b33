"""Training losses. `apply(x, t, key) -> (outputs, aux)` runs the network in train mode.

Shapes: x0 (B, H, W, C) clean images in [−1, 1], labels (B,) int.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxguide.sde import VPSDE


def dsm_loss(apply, sde: VPSDE, key: jax.Array, x0: jax.Array, t_min: float = 1e-3,
             labels: jax.Array | None = None, null_class: int | None = None,
             label_dropout: float = 0.0):
    """Denoising score matching for a noise predictor: E‖ε̂(x_t, t) − ε‖², t ~ U[t_min, T].

    With labels (B,) the predictor is class-conditional, ε̂(x_t, t, y), and each label is
    replaced by `null_class` with probability `label_dropout` (classifier-free guidance's
    training: one network learns ε̂(x, t, y) and ε̂(x, t, ∅)).
    Returns (loss, aux) with the loss averaged over pixels and the batch.
    """
    k_t, k_noise, k_net = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, x0.shape[:1], minval=t_min, maxval=sde.T)
    x_t, noise = sde.marginal(k_noise, x0, t)
    if labels is None:
        eps_hat, aux = apply(x_t, t, k_net)
    else:
        dropped = jax.random.bernoulli(jax.random.fold_in(key, 3), label_dropout, labels.shape)
        eps_hat, aux = apply(x_t, t, k_net, jnp.where(dropped, null_class, labels))
    return jnp.mean((eps_hat - noise) ** 2), aux


def nll(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of labels (B,) under log-probabilities (B, K)."""
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def noisy_classifier_loss(apply, sde: VPSDE, key: jax.Array, x0: jax.Array, labels: jax.Array,
                          t_min: float = 0.0):
    """NLL of the labels for x_t at t ~ U[t_min, T] (the noise-conditioned classifier)."""
    k_t, k_noise, k_net = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, x0.shape[:1], minval=t_min, maxval=sde.T)
    x_t, _ = sde.marginal(k_noise, x0, t)
    log_probs, aux = apply(x_t, t, k_net)
    return nll(log_probs, labels), aux


def clean_classifier_loss(apply, key: jax.Array, x0: jax.Array, labels: jax.Array):
    """NLL of the labels on clean images (the evaluator), with t = 0."""
    log_probs, aux = apply(x0, jnp.zeros(x0.shape[:1]), key)
    return nll(log_probs, labels), aux
