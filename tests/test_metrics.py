"""Metrics: Fréchet distance against closed forms, accuracy, and the bundled evaluator."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import raising_cases
from jaxguide import metrics, nets

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
        x = metrics.check_images(np.full((2, 28, 28, 1), 0.5, dtype), (28, 28, 1))
        assert x.dtype == np.float32 and np.all(x == 0.5)


# ------------------------------------------------------------------ bad arguments

FEATS = np.random.default_rng(0).normal(size=(6, 3))
LABELS = np.array([0, 0, 1, 1, 2, 2])
REF = metrics.reference_stats(FEATS, LABELS)


class _NeverRun:
    """An evaluator stand-in: argument errors must come before any evaluation."""

    model = nets.Evaluator()  # Read for its num_classes only.
    metadata = {"image_shape": [28, 28, 1]}

    def __call__(self, images):
        raise AssertionError("the evaluator ran before the arguments were checked")


def _ref_without(key):
    return {k: v for k, v in REF.items() if k != key}


METRICS_CASES = {
    "frechet_distance-nan": (lambda: metrics.frechet_distance(np.full((5, 3), np.nan), FEATS),
                             ValueError, r"features: contain NaN or inf, accepted finite"),
    "frechet_distance-None": (lambda: metrics.frechet_distance(None, FEATS),
                              TypeError, r"features: got NoneType of dtype object, accepted an "
                              r"array \(N, D\) of real numbers"),
    "frechet_distance-strings": (lambda: metrics.frechet_distance([["a"], ["b"]], FEATS),
                                 TypeError, r"features: got list of dtype <U1, accepted an array "
                                 r"\(N, D\)"),
    "frechet_distance-number-strings": (  # Were parsed as numbers.
        lambda: metrics.frechet_distance(FEATS.astype(str), FEATS),
        TypeError, r"features: got ndarray of dtype <U\d+, accepted an array \(N, D\) of real"),
    "frechet_distance-complex": (  # Lost their imaginary part: FD 0.
        lambda: metrics.frechet_distance(FEATS + 100j, FEATS),
        TypeError, r"features: got ndarray of dtype complex128, accepted an array \(N, D\) of "
        r"real numbers"),
    "frechet_distance-no-dims": (lambda: metrics.frechet_distance(np.zeros((5, 0)), FEATS),
                                 ValueError, r"features: got shape \(5, 0\), accepted \(N, D\)"),
    "frechet_from_stats-non-square": (lambda: metrics.frechet_from_stats(
        np.zeros(3), np.eye(3)[:, :2], np.zeros(3), np.eye(3)),
        ValueError, r"cov_a: got shape \(3, 2\), accepted a covariance \(D, D\) = \(3, 3\)"),
    "frechet_from_stats-mismatched-cov": (lambda: metrics.frechet_from_stats(
        np.zeros(3), np.eye(3), np.zeros(3), np.eye(4)),
        ValueError, r"cov_b: got shape \(4, 4\), accepted a covariance \(D, D\) = \(3, 3\) for mu_b"),
    "frechet_from_stats-mu-rank": (lambda: metrics.frechet_from_stats(
        np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)),
        ValueError, r"mu_a: got shape \(3, 1\), accepted a mean \(D,\)"),
    "frechet_from_stats-nan": (lambda: metrics.frechet_from_stats(
        np.zeros(3), np.eye(3), np.zeros(3), np.full((3, 3), np.nan)),
        ValueError, r"cov_b: contain NaN or inf"),
    "frechet_from_stats-asymmetric": (lambda: metrics.frechet_from_stats(
        np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2)),
        ValueError, r"cov_a: not symmetric"),
    "reference_stats-length": (lambda: metrics.reference_stats(np.zeros((3, 4)), [0, 0]),
                               ValueError, r"labels: got int\d+\(2,\), accepted integers of shape \(3,\)"),
    "reference_stats-singleton-class": (lambda: metrics.reference_stats(FEATS, [0, 0, 1, 1, 1, 2]),
                                        ValueError, r"labels: class 2 has 1 example, accepted >= 2"),
    "reference_stats-negative-label": (lambda: metrics.reference_stats(FEATS, -LABELS),
                                       ValueError, r"labels: got values in \[-2, 0\], accepted integers >= 0"),
    "class_frechet-missing-class": (lambda: metrics.class_frechet_distance(
        np.zeros((4, 3)), [5, 5, 5, 5], {}),
        ValueError, r"ref: has no mu_5 and cov_5 \(the statistics of class 5\)"),
    "class_frechet-length": (lambda: metrics.class_frechet_distance(FEATS, LABELS[:4], REF),
                             ValueError, r"labels: got int\d+\(4,\), accepted integers of shape \(6,\)"),
    "class_frechet-bad-ref-cov": (lambda: metrics.class_frechet_distance(
        FEATS, LABELS, {**REF, "cov_1": np.eye(2)}),
        ValueError, r"ref\['cov_1'\]: got shape \(2, 2\), accepted a covariance \(D, D\) = \(3, 3\)"),
    "evaluate_samples-ref-None": (lambda: metrics.evaluate_samples(
        _NeverRun(), np.zeros((2, 28, 28, 1)), [0, 0], None),
        TypeError, r"ref: got NoneType, accepted a dict of reference statistics"),
    "evaluate_samples-ref-no-overall": (lambda: metrics.evaluate_samples(
        _NeverRun(), np.zeros((2, 28, 28, 1)), [0, 0], _ref_without("mu")),
        ValueError, r"ref: has no mu and cov \(the statistics of all classes\)"),
    "evaluate_samples-ref-missing-class": (lambda: metrics.evaluate_samples(
        _NeverRun(), np.zeros((2, 28, 28, 1)), [7, 7], REF),
        ValueError, r"ref: has no mu_7 and cov_7 \(the statistics of class 7\)"),
    "evaluate_samples-labels-length": (lambda: metrics.evaluate_samples(
        _NeverRun(), np.zeros((2, 28, 28, 1)), [0], REF),
        ValueError, r"labels: got int\d+\(1,\), accepted integers of shape \(2,\)"),
    "evaluate_samples-one-per-class": (lambda: metrics.evaluate_samples(
        _NeverRun(), np.zeros((2, 28, 28, 1)), [0, 1], REF),
        ValueError, r"labels: class 0 has 1 example, accepted >= 2 per class"),
    "guided_accuracy-logits": (lambda: metrics.guided_accuracy(np.zeros((2, 10)), [1, 0]),
                               ValueError, r"predictions: got float64\(2, 10\), accepted integer "
                                           r"classes of shape \(N,\).*not logits"),
    "guided_accuracy-length": (lambda: metrics.guided_accuracy(np.array([1, 0, 1]), [1, 0]),
                               ValueError, r"labels: got int\d+\(2,\), accepted integers of shape \(3,\)"),
    "guided_accuracy-empty": (lambda: metrics.guided_accuracy(np.array([], int), []),
                              ValueError, r"predictions: got int\d+\(0,\), accepted .*N >= 1"),
    "guided_accuracy-num_classes-0": (lambda: metrics.guided_accuracy(np.array([1, 0]), [1, 0],
                                                                      num_classes=0),
                                      ValueError, r"num_classes: got 0, accepted an integer >= 1"),
    "images-shape": (lambda: metrics.check_images(np.zeros((2, 28, 28)), (28, 28, 1)),
                     ValueError, r"images: got shape \(2, 28, 28\), accepted \(N, 28, 28, 1\)"),
    "images-nan": (lambda: metrics.check_images(np.full((1, 28, 28, 1), np.nan), (28, 28, 1)),
                   ValueError, r"images: contain NaN or inf"),
    "images-range": (lambda: metrics.check_images(np.full((1, 28, 28, 1), 255.0), (28, 28, 1)),
                     ValueError, r"images: values span \[255, 255\], accepted \[-1, 1\]"),
    "images-uint8": (lambda: metrics.check_images(np.zeros((1, 28, 28, 1), np.uint8), (28, 28, 1)),
                     ValueError, r"images: got dtype uint8"),
    "frechet-dims": (lambda: metrics.frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4)),
                     ValueError, r"features: dimensions differ \(\(3,\) vs \(4,\)\)"),
    "frechet-one-sample": (lambda: metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3))),
                           ValueError, r"features: got shape \(1, 3\), accepted \(N, D\) with N >= 2"),
    "Evaluator-batch_size-0": (lambda: metrics.Evaluator("unused", batch_size=0),
                               ValueError, r"batch_size: got 0, accepted an integer >= 1"),
}

test_bad_argument = raising_cases(METRICS_CASES)


def test_reference_stats_keys_still_match_the_classes():
    assert sorted(REF) == ["cov", "cov_0", "cov_1", "cov_2", "mu", "mu_0", "mu_1", "mu_2"]
    assert metrics.class_frechet_distance(FEATS, LABELS, REF) == pytest.approx(0.0, abs=1e-8)


def test_background_noise_is_the_rms_of_the_black_border():
    x = -np.ones((4, 28, 28, 1), np.float32)
    x[:, 10:18, 10:18] = 1.0  # A digit in the middle is not background.
    x[:, 0, :5] = 1.0  # Nor is a stroke that reaches the border.
    assert metrics.background_noise(x) == 0.0
    noise = np.random.default_rng(0).normal(0.0, 0.05, x.shape).astype(np.float32)
    assert metrics.background_noise(np.clip(x + np.abs(noise), -1, 1)) == pytest.approx(0.05, rel=0.05)
    assert np.isnan(metrics.background_noise(np.ones_like(x)))
