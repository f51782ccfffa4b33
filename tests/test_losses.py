"""losses: label dropout of the class-conditional denoising loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguide.losses import dsm_loss
from jaxguide.sde import VPSDE

NULL = 10


def _labels_seen(label_dropout, n=20_000):
    """The labels the network receives in one dsm_loss call on n images of labels 0..9."""
    seen = {}

    def apply(x_t, t, key, y):
        seen["y"] = y
        return jnp.zeros_like(x_t), {}

    labels = jnp.arange(n) % NULL
    dsm_loss(apply, VPSDE(), jax.random.key(0), jnp.zeros((n, 2, 2, 1)), labels=labels,
             null_class=NULL, label_dropout=label_dropout)
    return np.asarray(labels), np.asarray(seen["y"])


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_label_dropout_draws_the_null_class_at_its_rate(p):
    labels, y = _labels_seen(p)
    dropped = y == NULL
    # The rate within 4 standard errors; the other labels are passed on unchanged.
    assert abs(dropped.mean() - p) <= 4 * np.sqrt(p * (1 - p) / len(y)) + 1e-12
    np.testing.assert_array_equal(y[~dropped], labels[~dropped])
    assert np.all(y[dropped] == NULL)
