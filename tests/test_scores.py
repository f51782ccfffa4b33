"""Tests for jaxguide.scores: gradients vs finite differences, per-example labels/scales,
composition, classifier-free guidance, no recompilation under samplers.sample, and input
validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from conftest import raising_cases
from jaxguide import samplers
from jaxguide.nets import NoisyClassifier, apply_fn
from jaxguide.scores import (add_scores, classifier_free_guidance, classifier_grad,
                             classifier_guidance, density_grad, guidance_term, label_log_prob,
                             score_from_eps)
from jaxguide.sde import VPSDE

B, D, K = 3, 4, 3
_rng = np.random.default_rng(0)
W = _rng.normal(size=(D, K)).astype(np.float32)
C = _rng.normal(size=(K,)).astype(np.float32)
X = _rng.normal(size=(B, D)).astype(np.float32)
T = np.array([0.1, 0.5, 0.9], np.float32)


def linear_log_prob(x, t):
    """A linear-softmax 'noisy classifier': log softmax(x W + t c), shape (B, K)."""
    return jax.nn.log_softmax(x @ jnp.asarray(W) + t[:, None] * jnp.asarray(C), axis=-1)


def gaussian_score(x, t):
    """The score of N(0, I): exact at every t under the VP-SDE."""
    return -x


def analytic_class_grad(x, t, labels):
    logits = x @ W + t[:, None] * C
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return W[:, labels].T - p @ W.T


def fd_label_grad(x, t, labels, eps=1e-3):
    """Central differences of log q(labels | x, t), one coordinate of one example at a time."""
    f = lambda x: np.asarray(label_log_prob(linear_log_prob, labels)(jnp.asarray(x), jnp.asarray(t)))
    g = np.zeros_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for j in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[b, j] += eps
            xm[b, j] -= eps
            fp, fm = f(xp), f(xm)
            g[b, j] = (fp[b] - fm[b]) / (2 * eps)
            # Examples are independent: moving example b changes no other example's value.
            others = np.arange(x.shape[0]) != b
            np.testing.assert_allclose(fp[others], fm[others], rtol=0, atol=0)
    return g


# ------------------------------------------------------------------ gradients


def test_returns_partials_with_traced_leaves():
    labels, scale = np.array([0, 1, 2]), np.array([0.5, 1.0, 2.0], np.float32)
    g = classifier_guidance(gaussian_score, linear_log_prob, labels, scale)
    assert isinstance(g, Partial)
    leaves = jax.tree_util.tree_leaves(g)
    assert any(l.dtype == jnp.int32 and np.array_equal(l, labels) for l in leaves)
    assert any(l.dtype == jnp.float32 and np.array_equal(l, scale) for l in leaves)
    for fn in (label_log_prob(linear_log_prob, labels), classifier_grad(linear_log_prob, labels),
               density_grad(gaussian_score), guidance_term(gaussian_score, 1.0), add_scores(g)):
        assert isinstance(fn, Partial)


def test_classifier_grad_matches_finite_differences_per_example():
    labels = np.array([2, 0, 1])
    g = np.asarray(classifier_grad(linear_log_prob, labels)(jnp.asarray(X), jnp.asarray(T)))
    assert g.shape == X.shape
    fd = fd_label_grad(X, T, labels)
    np.testing.assert_allclose(g, fd, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(g, analytic_class_grad(X, T, labels), rtol=1e-5, atol=1e-6)


def test_guided_score_matches_finite_differences():
    labels, scale = np.array([1, 1, 0]), 2.5
    guided = classifier_guidance(gaussian_score, linear_log_prob, labels, scale, num_classes=K)
    out = np.asarray(guided(jnp.asarray(X), jnp.asarray(T)))
    expected = -X + scale * fd_label_grad(X, T, labels)
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=2e-3)


def test_per_example_labels_and_scales():
    labels = np.array([2, 0, 1])
    scale = np.array([0.0, 1.5, 4.0], np.float32)
    x, t = jnp.asarray(X), jnp.asarray(T)
    out = np.asarray(classifier_guidance(gaussian_score, linear_log_prob, labels, scale)(x, t))
    for b in range(B):
        alone = classifier_guidance(gaussian_score, linear_log_prob, labels[b], scale[b])(
            x[b:b + 1], t[b:b + 1])
        np.testing.assert_allclose(out[b], np.asarray(alone)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        out, -X + scale[:, None] * analytic_class_grad(X, T, labels), rtol=1e-5, atol=1e-5)
    # Example 0 has scale 0: exactly the unguided score.
    np.testing.assert_array_equal(out[0], -X[0])
    # A scalar label/scale broadcasts over the batch.
    out_s = classifier_guidance(gaussian_score, linear_log_prob, 1, 2.0)(x, t)
    out_v = classifier_guidance(gaussian_score, linear_log_prob, np.ones(B, int), np.full(B, 2.0))(x, t)
    np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_v), rtol=1e-6)


def test_scale_zero_returns_unguided_score():
    x, t = jnp.asarray(X), jnp.asarray(T)
    for scale in (0.0, np.zeros(B, np.float32)):
        out = classifier_guidance(gaussian_score, linear_log_prob, np.array([0, 1, 2]), scale)(x, t)
        np.testing.assert_array_equal(np.asarray(out), -X)


def test_composition_is_a_sum():
    x, t = jnp.asarray(X), jnp.asarray(T)
    term_a = guidance_term(label_log_prob(linear_log_prob, np.array([0, 1, 2])), 1.5)
    lp_b = lambda x, t: -0.5 * jnp.sum((x - 1.0) ** 2, axis=-1)  # a second "density"
    term_b = guidance_term(lp_b, np.array([0.5, 1.0, 2.0]))
    total = add_scores(gaussian_score, term_a, term_b)(x, t)
    parts = gaussian_score(x, t) + term_a(x, t) + term_b(x, t)
    np.testing.assert_allclose(np.asarray(total), np.asarray(parts), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(term_b(x, t)),
                               np.array([0.5, 1.0, 2.0])[:, None] * (1.0 - X), rtol=1e-6, atol=1e-6)
    # classifier_guidance is add_scores(score, guidance_term(label_log_prob, scale)).
    cg = classifier_guidance(gaussian_score, linear_log_prob, np.array([0, 1, 2]), 1.5)(x, t)
    np.testing.assert_allclose(np.asarray(cg), np.asarray(add_scores(gaussian_score, term_a)(x, t)),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        add_scores()


# ------------------------------------------------------------------ no recompilation

TRACES = 0


def _counting_score(x, t):
    global TRACES
    TRACES += 1  # runs only while being traced
    return -x


def _counting_log_prob(x, t):
    return linear_log_prob(x, t)


def test_no_retrace_when_labels_or_scale_change():
    global TRACES
    TRACES = 0
    sde, key, n = VPSDE(), jax.random.key(0), 6
    outs = []
    for i, (labels, scale) in enumerate([
            (np.arange(n) % K, np.full(n, 1.0, np.float32)),
            (np.full(n, 2), np.linspace(0.0, 3.0, n).astype(np.float32)),
            (np.array([1, 0, 2, 2, 0, 1]), np.full(n, 5.0, np.float32))]):
        score = classifier_guidance(Partial(_counting_score), _counting_log_prob, labels, scale,
                                    num_classes=K)
        outs.append(np.asarray(samplers.sample(key, score, sde, (n, D), n_steps=8)))
        assert TRACES == 1, f"call {i}: score traced {TRACES} times"
    # The new labels/scales were used, not baked-in constants of the first trace.
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[1], outs[2])


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([-1, 0]), 3, -1])
def test_labels_out_of_range(labels):
    with pytest.raises(ValueError, match="labels"):
        classifier_guidance(gaussian_score, linear_log_prob, labels, 1.0, num_classes=K)


@pytest.mark.parametrize("labels", [np.array([0.5, 1.0]), 1.5, np.array([[0, 1]]), np.array([True, False])])
def test_labels_bad_type_or_shape(labels):
    with pytest.raises(ValueError, match="labels"):
        classifier_guidance(gaussian_score, linear_log_prob, labels, 1.0)


def test_integral_float_labels_accepted():
    g = classifier_guidance(gaussian_score, linear_log_prob, np.array([0.0, 2.0, 1.0]), 1.0, num_classes=K)
    ref = classifier_guidance(gaussian_score, linear_log_prob, np.array([0, 2, 1]), 1.0)
    x, t = jnp.asarray(X), jnp.asarray(T)
    np.testing.assert_array_equal(np.asarray(g(x, t)), np.asarray(ref(x, t)))


@pytest.mark.parametrize("scale", [np.array([1.0, np.nan, 1.0]), np.ones((2, 2))])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        classifier_guidance(gaussian_score, linear_log_prob, 0, scale)
    with pytest.raises(ValueError, match="scale"):
        guidance_term(gaussian_score, scale)


def test_non_callable_rejected():
    with pytest.raises(TypeError):
        classifier_guidance(gaussian_score, "not a function", 0, 1.0)


# ------------------------------------------------------------------ classifier-free guidance
SDE = VPSDE()
E = _rng.normal(size=(K + 1, D)).astype(np.float32)  # One offset per class and the null one.


class ToyEps:
    """A class-conditional toy noise predictor ε̂(x, t, y) = tanh(x) · t + E[y]; records the
    batch size of each call run (not merely traced)."""

    num_classes = K

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        n = x.shape[0]
        jax.debug.callback(lambda: self.batches.append(n))
        return jnp.tanh(x) * t[:, None] + jnp.asarray(E)[y]


def test_classifier_free_guidance_is_the_formula_in_one_call():
    eps_fn, labels, w = ToyEps(), jnp.array([0, 2, 1]), jnp.array([0.0, 1.5, 4.0])
    score = classifier_free_guidance(eps_fn, SDE, labels, w, num_classes=K)(X, T)
    assert eps_fn.batches == [2 * B]  # Conditional and unconditional in one batched call.
    cond = eps_fn(X, T, labels)
    uncond = eps_fn(X, T, jnp.full(B, K))
    expected = -((1 + w[:, None]) * cond - w[:, None] * uncond) / SDE.std(T)[:, None]
    np.testing.assert_allclose(score, expected, rtol=1e-5)


def test_classifier_free_guidance_composes_with_classifier_guidance():
    free = classifier_free_guidance(ToyEps(), SDE, 1, 2.0, num_classes=K)
    both = classifier_guidance(free, linear_log_prob, 1, 3.0)
    np.testing.assert_allclose(both(X, T), free(X, T) + 3.0 * classifier_grad(linear_log_prob, 1)(X, T),
                               rtol=1e-5)


def test_classifier_free_guidance_does_not_recompile_for_new_labels_or_weights():
    eps_fn = Partial(ToyEps())
    traces = []

    @jax.jit
    def run(score_fn):
        traces.append(1)
        return score_fn(X, T)

    for labels, w in ((0, 1.0), (2, 5.0), (jnp.array([1, 0, 2]), jnp.array([0.5, 1.0, 2.0]))):
        run(classifier_free_guidance(eps_fn, SDE, labels, w, num_classes=K))
    assert len(traces) == 2  # Scalar and per-example labels/weights: two shapes, no more.


def test_classifier_free_guidance_needs_a_conditional_model():
    with pytest.raises(ValueError, match="num_classes: got None"):
        classifier_free_guidance(lambda x, t, y: x, SDE, 0, 1.0)
    with pytest.raises(ValueError, match=r"labels: got 3, accepted \[0, 2\]"):
        classifier_free_guidance(ToyEps(), SDE, 3, 1.0, num_classes=K)


# ------------------------------------------------------------------ guidance interval


def test_classifier_free_guidance_interval_is_the_conditional_model_outside():
    eps_fn, labels = ToyEps(), jnp.array([0, 2, 1])
    full = classifier_free_guidance(eps_fn, SDE, labels, 2.0, num_classes=K)
    limited = classifier_free_guidance(eps_fn, SDE, labels, 2.0, num_classes=K,
                                       interval=(0.3, 0.6))
    alone = classifier_free_guidance(eps_fn, SDE, labels, 0.0, num_classes=K)
    inside = (T >= 0.3) & (T <= 0.6)
    np.testing.assert_allclose(limited(X, T), np.where(inside[:, None], full(X, T), alone(X, T)),
                               rtol=1e-6)
    eps_fn.batches.clear()
    limited(X, jnp.full(B, 0.9))
    alone(X, T)
    assert eps_fn.batches == [B, B]  # Unguided: no unconditional prediction is computed.


def test_guidance_interval_applies_the_term_only_inside():
    full = classifier_guidance(gaussian_score, linear_log_prob, 1, 2.0)
    limited = classifier_guidance(gaussian_score, linear_log_prob, 1, 2.0, interval=(0.3, 0.6))
    inside = (T >= 0.3) & (T <= 0.6)
    expected = np.where(inside[:, None], full(X, T), gaussian_score(X, T))
    np.testing.assert_allclose(limited(X, T), expected, rtol=1e-6)


def test_guidance_interval_does_not_run_the_classifier_outside():
    runs = []

    def counting_log_prob(x, t):
        jax.debug.callback(lambda: runs.append(1))
        return linear_log_prob(x, t)

    score = jax.jit(lambda f, x, t: f(x, t))
    limited = classifier_guidance(gaussian_score, counting_log_prob, 1, 2.0, interval=(0.3, 0.6))
    for t in (0.1, 0.5, 0.9):
        score(limited, X, jnp.full(B, t)).block_until_ready()
    assert len(runs) == 1  # Only at t = 0.5.


def test_guidance_interval_bounds_do_not_recompile():
    traces = []

    @jax.jit
    def run(score_fn):
        traces.append(1)
        return score_fn(X, T)

    for lo, hi in ((0.0, 1.0), (0.2, 0.4), (0.5, 0.5)):
        run(classifier_guidance(gaussian_score, linear_log_prob, 1, 2.0, interval=(lo, hi)))
    assert len(traces) == 1
    with pytest.raises(ValueError, match=r"interval: got \(0\.5, 0\.2\), accepted real times"):
        classifier_guidance(gaussian_score, linear_log_prob, 1, 2.0, interval=(0.5, 0.2))


# ------------------------------------------------------------------ bad arguments
# One case per rule; each error names the argument and what is accepted.


def _score(x, t):
    return -x


def _log_probs(x, t):
    """A plain user function (no num_classes to find): 3 classes, from the first 3 of x (B, D).
    Other pixels have no gradient: a poisoned label must reach them all the same."""
    return jax.nn.log_softmax(x[:, :3])


CLASSIFIER = apply_fn(NoisyClassifier(), {})  # Its model knows num_classes (10).
KEY = jax.random.key(0)


def _ten_classes(x, t):
    return jnp.zeros((x.shape[0], 10))


def _guided_at(log_prob_fn, labels=0):
    """The guided score of a batch of 2, evaluated (that is, traced) once."""
    g = classifier_guidance(_score, log_prob_fn, labels, 1.0)
    return g(jnp.ones((2, 4)), jnp.full(2, 0.5))


test_bad_argument = raising_cases({
    "labels-beyond-the-model's-classes": (
        lambda: classifier_guidance(_score, CLASSIFIER, jnp.array([10, 42]), 32.0),
        ValueError, r"labels: got 10, accepted \[0, 9\]"),
    "num_classes-0": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0, num_classes=0),
                      ValueError, r"num_classes: got 0, accepted an integer >= 1"),
    "num_classes-str": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0, num_classes="10"),
                        TypeError, r"num_classes: got '10', accepted an integer >= 1"),
    "num_classes-not-the-model's": (
        lambda: classifier_guidance(_score, CLASSIFIER, 11, 1.0, num_classes=12),
        ValueError, r"num_classes: got 12, accepted 10 \(the classes of log_prob_fn's model\)"),
    "log_prob_fn-returns-B": (lambda: _guided_at(lambda x, t: x.sum(-1)),
                              ValueError, r"log_prob_fn: returned shape \(2,\) for x of shape "
                              r"\(2, 4\), accepted \(2, K\)"),
    "scale-overflows-float32": (lambda: classifier_guidance(_score, _log_probs, 0, 1e39),
                                ValueError, r"scale: got 1e\+39, accepted a finite number >= 0 "
                                r"that fits float32 \(<= 3\.4e38\)"),
    "scale-str": (lambda: classifier_guidance(_score, _log_probs, 0, "3"),
                  ValueError, r"scale: got '3', accepted a finite number"),
    "score_fn-int": (lambda: classifier_guidance(5, _log_probs, 0, 1.0),
                     TypeError, r"score_fn: got int, accepted a function of \(x, t\)"),
    "add_scores-int": (lambda: add_scores(_score, 5),
                       TypeError, r"score_fns\[1\]: got \w+, accepted a function"),
    "min_std-2": (lambda: score_from_eps(_score, SDE, min_std=2.0),
                  ValueError, r"min_std: got 2\.0, accepted a number in \[1\.2e-38, 1\]"),
    "sde-None": (lambda: score_from_eps(_score, None),
                 TypeError, r"sde: got NoneType, accepted a jaxguide\.VPSDE"),
    "add_scores-term-shape": (
        lambda: samplers.sample(KEY, add_scores(_score, lambda x, t: x[:1]), VPSDE(), (2, 4), n_steps=2),
        ValueError, r"score_fns\[1\]: returned shape \(1, 4\) for x of shape \(2, 4\)"),
    "guidance-label-above-int32": (
        lambda: classifier_guidance(_score, _ten_classes, np.array([2**32 + 3]), 1.0),
        ValueError, r"labels: got 4294967299, accepted \[0, 2147483647\]"),
    "guidance-label-string": (lambda: classifier_guidance(_score, _ten_classes, "3", 1.0),
                              ValueError, r"labels: got '3', accepted integer class indices"),
    "guidance-traced-float-labels": (
        lambda: jax.jit(lambda lab: classifier_guidance(_score, _ten_classes, lab, 1.0)(
            jnp.ones((2, 4)), jnp.full(2, 0.5)))(jnp.array([1.5, 2.0])),
        ValueError, r"labels: got a traced array of dtype float32, accepted integer class"),
    "guidance-traced-complex-scale": (
        lambda: jax.jit(lambda sc: classifier_guidance(_score, _ten_classes, 1, sc)(
            jnp.ones((2, 4)), jnp.full(2, 0.5)))(jnp.complex64(2)),
        ValueError, r"scale: got a traced array of dtype complex64, accepted a real number"),
    "guidance_term-per-class-output": (
        lambda: guidance_term(_ten_classes, 1.0)(jnp.ones((2, 4)), jnp.full(2, 0.5)),
        ValueError, r"log_density_fn: returned shape \(2, 10\) for x of shape \(2, 4\), "
        r"accepted \(2,\)"),
    "score_from_eps-output-shape": (
        lambda: score_from_eps(lambda x, t: jnp.zeros(2), VPSDE())(jnp.ones((2, 4)),
                                                                   jnp.full(2, 0.5)),
        ValueError, r"eps_fn: returned shape \(2,\) for x of shape \(2, 4\)"),
    "score_from_eps-integer-x": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())(jnp.ones((2, 4), jnp.int32),
                                                        jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "score_from_eps-t-batch": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())(jnp.ones((2, 4)), jnp.full(3, 0.5)),
        ValueError, r"t: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
    "scale-other-batch": (
        lambda: samplers.sample(KEY, classifier_guidance(_score, _ten_classes, 1, jnp.ones(3)),
                                VPSDE(), (2, 4), n_steps=2),
        ValueError, r"scale: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
    "guided-integer-x": (
        lambda: classifier_guidance(_score, _ten_classes, 1, 1.0)(jnp.ones((2, 4), jnp.int32),
                                                                  jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "guidance_term-integer-x": (
        lambda: guidance_term(lambda x, t: x.sum(1), 1.0)(jnp.ones((2, 4), jnp.int32),
                                                          jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "interval-not-a-pair": (
        lambda: classifier_free_guidance(ToyEps(), SDE, 1, 1.0, num_classes=K, interval=0.5),
        ValueError, r"interval: got 0\.5, accepted a pair \(t_lo, t_hi\) or None"),
    "guidance-ragged-labels": (
        lambda: classifier_guidance(_score, _ten_classes, [[0], [1, 2]], 1.0),
        ValueError, r"labels: got \[\[0\], \[1, 2\]\], accepted integer class indices"),
    "score_from_eps-list-x": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())([[0.0]], 0.5),
        TypeError, r"x: got a list, accepted an array"),
    "label_log_prob-num_classes-above-K": (  # Label 11 would only have made NaN.
        lambda: label_log_prob(_ten_classes, 11, num_classes=12)(jnp.ones((2, 4)), jnp.full(2, 0.5)),
        ValueError, r"log_prob_fn: returned shape \(\d+, 10\) .*accepted \(\d+, 12\)"),
    "guidance-label-negative": (lambda: classifier_guidance(_score, _ten_classes, -1, 1.0),
                                ValueError, r"labels: got -1, accepted \[0, 2147483647\]"),
    "guidance-scale-negative": (lambda: classifier_guidance(_score, _ten_classes, 1, -2.0),
                                ValueError, r"scale: got -2\.0, accepted a finite number >= 0"),
    "guidance-labels-other-batch": (
        lambda: samplers.sample(KEY, classifier_guidance(_score, _ten_classes, jnp.zeros(3, int), 1.0),
                       VPSDE(), (2, 4), n_steps=2),
        ValueError, r"labels: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
})


def test_out_of_range_label_found_only_when_traced_gives_nan_not_an_unguided_image():
    # A plain function (no num_classes): label 5 of 3 passes construction, but the sample
    # must not be the unguided one (an out-of-range gather has a zero gradient).
    guided = classifier_guidance(_score, _log_probs, jnp.array([1, 5]), 32.0)
    key, sde = jax.random.key(0), VPSDE()
    x = np.asarray(samplers.sample(key, guided, sde, (2, 4), n_steps=2))
    assert np.all(np.isfinite(x[0])) and np.all(np.isnan(x[1]))
    unguided = np.asarray(samplers.sample(key, _score, sde, (2, 4), n_steps=2))
    assert not np.array_equal(x[0], unguided[0])  # label 1 guides
    # A negative label, traced (so not checked when built), poisons value and gradient alike.
    x, t = jnp.ones((2, 4)), jnp.full(2, 0.5)
    value = jax.jit(lambda lab: label_log_prob(_log_probs, lab)(x, t))(jnp.array([0, -1]))
    grad = jax.jit(lambda lab: classifier_grad(_log_probs, lab)(x, t))(jnp.array([0, -1]))
    assert np.isfinite(value[0]) and np.isnan(value[1])
    assert np.all(np.isfinite(grad[0])) and np.all(np.isnan(grad[1]))


def test_in_range_labels_are_unchanged():
    x, t = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32), jnp.full(3, 0.5)
    labels = np.array([2, 0, 1])
    expected = np.asarray(_log_probs(x, t))[np.arange(3), labels]
    np.testing.assert_array_equal(np.asarray(label_log_prob(_log_probs, labels)(x, t)), expected)


def test_min_std_floors_sigma():
    x, t = jnp.ones((2, 4)), jnp.array([1e-4, 1.0])
    score = score_from_eps(lambda x, t: x, SDE, min_std=1.0)(x, t)
    np.testing.assert_allclose(score, -x)  # σ(t) <= 1 everywhere: the floor replaces it.


def test_a_traced_negative_classifier_free_weight_makes_its_images_nan():
    w = jnp.array([-1.0, 1.0, 0.5])
    out = jax.jit(lambda w: classifier_free_guidance(ToyEps(), SDE, 1, w, num_classes=K)(X, T))(w)
    assert bool(jnp.all(jnp.isnan(out[0]))) and bool(jnp.all(jnp.isfinite(out[1:])))


def test_a_traced_negative_scale_makes_its_images_nan():
    guided = jax.jit(lambda sc: classifier_guidance(_score, _log_probs, 1, sc)(
        jnp.ones((2, 4)), jnp.full(2, 0.5)))
    assert bool(jnp.all(jnp.isnan(guided(jnp.array([-1.0, 1.0]))[0])))
    assert bool(jnp.all(jnp.isfinite(guided(jnp.array([-1.0, 1.0]))[1])))
