"""Metrics: Fréchet distance against closed forms, accuracy, and the bundled evaluator."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxguide import metrics

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"


def test_fd_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_two_gaussians_matches_the_closed_form():
    # N(μ₁, Σ₁), N(μ₂, Σ₂) with commuting diagonal covariances:
    # FD = ‖μ₁ − μ₂‖² + Σᵢ (σ₁ᵢ − σ₂ᵢ)².
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.5, 1.0, 1.0, 3.0])
    mu1, mu2 = np.zeros(d), np.array([1.0, -1.0, 0.5, 0.0])
    a = mu1 + s1 * rng.normal(size=(n, d))
    b = mu2 + s2 * rng.normal(size=(n, d))
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert metrics.frechet_distance(a, b) == pytest.approx(exact, rel=0.02)


def test_fd_with_a_full_covariance_matches_the_matrix_formula():
    # Non-commuting covariances: compare with tr(A + B − 2 (A^½ B A^½)^½) computed by hand.
    rng = np.random.default_rng(2)
    qa, qb = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    cov_a, cov_b = qa @ qa.T + np.eye(3), qb @ qb.T + np.eye(3)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    exact = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sum(np.sqrt(inner)) + 1.0
    got = metrics.frechet_from_stats(np.zeros(3), cov_a, np.array([1.0, 0, 0]), cov_b)
    assert got == pytest.approx(exact, rel=1e-10)


def test_class_fd_catches_a_collapsed_class():
    # Two classes; class 1 of the samples collapses onto one point of its reference.
    rng = np.random.default_rng(3)
    ref_feats = rng.normal(size=(4000, 3))
    ref_labels = np.arange(4000) % 2
    ref = metrics.reference_stats(ref_feats, ref_labels)
    good = rng.normal(size=(2000, 3))
    collapsed = good.copy()
    collapsed[1::2] = 0.3 * collapsed[1::2]
    labels = np.arange(2000) % 2
    assert metrics.class_frechet_distance(good, labels, ref) < 0.05
    assert metrics.class_frechet_distance(collapsed, labels, ref) > 0.5


def test_guided_accuracy_overall_and_per_class():
    acc, per_class = metrics.guided_accuracy(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert acc == 0.75 and per_class == {0: 1.0, 1: 1.0, 2: 0.5}


@pytest.mark.skipif(not (MNIST.is_dir() and (REPO / "checkpoints" / "evaluator").is_dir()),
                    reason="needs ../shared/data/mnist and checkpoints/evaluator")
def test_bundled_evaluator_is_at_least_99_percent_on_the_test_set():
    from jaxguide import data

    x, y = data.load_mnist("test", MNIST)
    ev = metrics.Evaluator(REPO / "checkpoints" / "evaluator")
    acc, _ = metrics.guided_accuracy(ev(x).predictions, y)
    assert acc >= 0.99, acc


def test_check_images_accepts_every_float_dtype():
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32, np.float64):
        x = metrics.check_images(np.full((2, 28, 28, 1), 0.5, dtype))
        assert x.dtype == np.float32 and np.all(x == 0.5)
