"""Tests for jaxguide.samplers against an analytic Gaussian mixture.

p0 = Σ w_k N(μ_k, s_k² I). Under the VP-SDE its marginal at t is Σ w_k N(m μ_k, (m² s_k² + σ²) I),
so the score ∇ log p_t and the class posterior q(k | x, t) are exact in closed form: sampling the
reverse SDE with them must reproduce p0 (unguided) and one component (exact classifier guidance).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from conftest import raising_cases
from jaxguide.configs import TrainConfig
from jaxguide.samplers import METHODS, NFE_PER_STEP, evaluation_times, sample, time_grid
from jaxguide.scores import classifier_guidance, score_from_eps
from jaxguide.sde import VPSDE

# ------------------------------------------------------------------ the mixture

# An equilateral triangle with side 3; unequal weights and widths.
MEANS = np.array([[0.0, math.sqrt(3.0)], [-1.5, -math.sqrt(3.0) / 2], [1.5, -math.sqrt(3.0) / 2]],
                 np.float32)
STDS = np.array([0.3, 0.4, 0.5], np.float32)
WEIGHTS = np.array([0.5, 0.3, 0.2], np.float32)
K, D = 3, 2
SDE = VPSDE()
N = 4000
N_STEPS = 400


def _component_log_joint(x, t):
    """log w_k + log N(x; m μ_k, v_k I), shape (B, K), and v (B, K), for x (B, D), t (B,)."""
    m = SDE.mean_coeff(t)[:, None]                       # (B, 1)
    var = m**2 * jnp.asarray(STDS)**2 + SDE.std(t)[:, None]**2   # (B, K)
    diff = x[:, None, :] - m[:, :, None] * jnp.asarray(MEANS)[None]  # (B, K, D)
    log_n = -0.5 * jnp.sum(diff**2, -1) / var - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi * var)
    return jnp.log(jnp.asarray(WEIGHTS)) + log_n, var, diff


def gmm_log_posterior(x, t):
    """Exact log q(k | x, t), shape (B, K)."""
    lj, _, _ = _component_log_joint(x, t)
    return lj - jax.scipy.special.logsumexp(lj, axis=1, keepdims=True)


def gmm_score(x, t):
    """Exact ∇ₓ log p_t(x) = Σ_k q(k | x, t) · (−(x − m μ_k) / v_k), shape (B, D)."""
    lj, var, diff = _component_log_joint(x, t)
    post = jnp.exp(lj - jax.scipy.special.logsumexp(lj, axis=1, keepdims=True))
    return -jnp.sum((post / var)[:, :, None] * diff, axis=1)


def gmm_log_density(x, t):
    lj, _, _ = _component_log_joint(x, t)
    return jax.scipy.special.logsumexp(lj, axis=1)


def std_normal_score(x, t):
    """The exact score when p0 = N(0, I) (a cheap score for the plumbing tests)."""
    return -x


def nearest_component(x):
    return np.argmin(((np.asarray(x)[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)


T_MIN = 1e-3
_M_END = float(np.exp(-0.5 * (SDE.beta_min * T_MIN + 0.5 * T_MIN**2 * (SDE.beta_max - SDE.beta_min))))
_S_END = math.sqrt(1 - _M_END**2)
END_MEANS = _M_END * MEANS                              # the marginal at t_min: ≈ p0
END_STDS = np.sqrt(_M_END**2 * STDS**2 + _S_END**2)


def test_mixture_helpers_are_exact():
    """The helpers themselves: score = ∇ log density (autodiff), posterior normalised, and
    finite in the tails (logsumexp)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, D)) * 3, jnp.float32)
    x = x.at[0].set(jnp.array([40.0, -40.0]))
    t = jnp.array([1e-3, 0.1, 0.5, 1.0, 1e-3])

    @jax.jit
    def evaluate(x, t):
        auto = jax.grad(lambda x: jnp.sum(gmm_log_density(x, t)))(x)
        return gmm_score(x, t), auto, gmm_log_posterior(x, t)

    score, auto, lp = evaluate(x, t)
    np.testing.assert_allclose(np.asarray(score), np.asarray(auto), rtol=1e-4, atol=1e-4)
    assert lp.shape == (5, K) and bool(jnp.all(jnp.isfinite(lp)))
    np.testing.assert_allclose(np.asarray(jnp.exp(lp).sum(1)), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ unguided / guided


def _component_stats(x, comp, k):
    xs = x[comp == k]
    return len(xs), xs.mean(0), xs.std(0, ddof=1)


# Steps per method: enough for each to be accurate on the mixture (NFE = steps · NFE/step).
METHOD_STEPS = {"euler_maruyama": N_STEPS, "predictor_corrector": 200, "heun": 25,
                "dpm_solver_2m": 25, "dpm_solver_2m_sde": 20, "dpm_solver_3m_sde": 15}


@pytest.mark.parametrize("method", list(METHOD_STEPS))
def test_unguided_reproduces_mixture(method):
    x = np.asarray(sample(jax.random.key(0), Partial(gmm_score), SDE, (N, D),
                          n_steps=METHOD_STEPS[method], method=method, init="prior", clip=None,
                          t_min=T_MIN))
    assert x.shape == (N, D) and np.all(np.isfinite(x))
    comp = nearest_component(x)
    for k in range(K):
        n_k, mean_k, std_k = _component_stats(x, comp, k)
        w_hat = n_k / N
        tol_w = 4 * math.sqrt(WEIGHTS[k] * (1 - WEIGHTS[k]) / N) + 0.02
        assert abs(w_hat - WEIGHTS[k]) < tol_w, (k, w_hat, WEIGHTS[k], tol_w)
        assert np.all(np.abs(mean_k - END_MEANS[k]) < 0.1), (k, mean_k, END_MEANS[k])
        assert np.all(np.abs(std_k / END_STDS[k] - 1) < 0.15), (k, std_k, END_STDS[k])


@pytest.mark.parametrize("method", list(METHOD_STEPS))
def test_guided_lands_in_requested_component(method):
    labels = np.arange(N) % K
    score = classifier_guidance(Partial(gmm_score), Partial(gmm_log_posterior), labels, 1.0,
                                num_classes=K)
    x = np.asarray(sample(jax.random.key(1), score, SDE, (N, D), n_steps=METHOD_STEPS[method],
                          method=method, init="prior", clip=None, t_min=T_MIN))
    assert np.all(np.isfinite(x))
    comp = nearest_component(x)
    hit = np.mean(comp == labels)
    assert hit >= 0.97, hit
    for k in range(K):
        xs = x[labels == k]
        assert np.mean(comp[labels == k] == k) >= 0.95
        # Exact guidance at scale 1 samples the component itself (not a truncation of it).
        assert np.all(np.abs(xs.mean(0) - END_MEANS[k]) < 0.1), (k, xs.mean(0), END_MEANS[k])
        assert np.all(np.abs(xs.std(0, ddof=1) / END_STDS[k] - 1) < 0.15), (k, xs.std(0), END_STDS[k])


# ------------------------------------------------------------------ determinism / batching

SMALL = dict(n_steps=20, clip=None)


def test_same_key_same_samples_different_key_different():
    score = Partial(std_normal_score)
    a = sample(jax.random.key(7), score, SDE, (16, D), **SMALL)
    b = sample(jax.random.key(7), score, SDE, (16, D), **SMALL)
    c = sample(jax.random.key(8), score, SDE, (16, D), **SMALL)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.any(np.asarray(a) == np.asarray(c))
    # Rows differ from each other too (each sample has its own noise stream).
    assert len(np.unique(np.asarray(a)[:, 0])) == 16


def test_noise_is_per_sample_not_per_batch():
    score, key = Partial(std_normal_score), jax.random.key(3)
    full = np.asarray(sample(key, score, SDE, (16, D), **SMALL))
    half = np.asarray(sample(key, score, SDE, (8, D), **SMALL))
    np.testing.assert_array_equal(half, full[:8])
    rows = np.array([5, 0, 11, 15, 5, 2, 9, 14])
    picked = np.asarray(sample(key, score, SDE, (8, D), indices=rows, **SMALL))
    np.testing.assert_array_equal(picked, full[rows])
    # Rows past the batch: indices 16.. of a bigger run.
    later = np.asarray(sample(key, score, SDE, (8, D), indices=np.arange(16, 24), **SMALL))
    assert not np.any(later == full[:8])


def test_sample_composes_inside_jit_vmap_scan_and_grad():
    """sample is a function like any other: inside the caller's jit (with a traced or a
    captured key), vmap, scan and grad it gives the top-level result."""
    score, key = Partial(std_normal_score), jax.random.key(9)
    run = lambda k: sample(k, score, SDE, (4, D), **SMALL)
    want = np.asarray(run(key))
    np.testing.assert_allclose(jax.jit(run)(key), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda: run(key))(), want, rtol=1e-6, atol=1e-6)
    keys = jax.random.split(key, 3)
    batched = jax.vmap(run)(keys)
    np.testing.assert_allclose(batched[1], run(keys[1]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(run))(keys), batched, rtol=1e-6, atol=1e-6)
    _, scanned = jax.lax.scan(lambda c, k: (c, run(k)), 0, keys)
    np.testing.assert_allclose(scanned, batched, rtol=1e-6, atol=1e-6)
    # d/ds of sum(x) for the score -s·x: finite differences against jax.grad.
    total = lambda s: sample(key, Partial(lambda s, x, t: -s * x, s), SDE, (4, D), **SMALL).sum()
    fd = (total(1.0 + 1e-2) - total(1.0 - 1e-2)) / 2e-2
    np.testing.assert_allclose(jax.grad(total)(1.0), fd, rtol=1e-2)


# ------------------------------------------------------------------ trajectories


def test_record_every_shapes_and_slots():
    score, key, n = Partial(std_normal_score), jax.random.key(4), 10
    x1, traj1 = sample(key, score, SDE, (5, D), n_steps=n, clip=None, record_every=1)
    x3, traj3 = sample(key, score, SDE, (5, D), n_steps=n, clip=None, record_every=3)
    assert traj1.shape == (n + 1, 5, D)
    assert traj3.shape == (math.ceil(n / 3) + 1, 5, D) == (5, 5, D)  # n not a multiple of k
    for x, traj in ((x1, traj1), (x3, traj3)):
        np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x))
    np.testing.assert_allclose(np.asarray(x3), np.asarray(x1), rtol=1e-6, atol=1e-6)
    t1 = np.asarray(traj1)
    # Slot j holds the state after step min(j·k, n).
    np.testing.assert_allclose(np.asarray(traj3), t1[[0, 3, 6, 9, 10]], rtol=1e-6, atol=1e-6)
    assert not np.array_equal(t1[0], t1[1])
    # Slot 0 is the initial state: with init="clipped" the clipped prior draw.
    _, traj_c = sample(key, score, SDE, (5, D), n_steps=n, clip=None, record_every=3, init="clipped")
    np.testing.assert_array_equal(np.asarray(traj_c[0]), np.clip(t1[0], -1, 1))
    assert np.any(np.abs(t1[0]) > 1)  # the clipping did something
    # k beyond n: the initial and the final state (no int32 overflow in the slot index).
    _, traj_big = sample(key, score, SDE, (5, D), n_steps=n, clip=None, record_every=2**31 - 1)
    np.testing.assert_allclose(np.asarray(traj_big), t1[[0, n]], rtol=1e-6, atol=1e-6)


def test_initial_state_analytically():
    """One noiseless step with a zero score: x_out = x_T (1 + ½ h β(T)), h = T − t_min."""
    zero = Partial(lambda x, t: jnp.zeros_like(x))
    x, traj = sample(jax.random.key(5), zero, SDE, (4000, D), n_steps=1, clip=None, record_every=1,
                     denoise_last=True)
    x0 = np.asarray(traj[0])
    h = SDE.T - T_MIN
    np.testing.assert_allclose(np.asarray(x), x0 * (1 + 0.5 * h * SDE.beta_max), rtol=1e-5)
    assert abs(x0.mean()) < 5 / math.sqrt(x0.size) and abs(x0.std() - 1) < 5 / math.sqrt(2 * x0.size)


def test_time_grid():
    ts = np.asarray(time_grid(SDE, 4, 0.2))
    np.testing.assert_allclose(ts, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)


# ------------------------------------------------------------------ score_from_eps


def test_score_from_eps():
    eps_fn = lambda x, t: 2.0 * x + t[:, None, None, None]
    min_std = 0.05
    score = score_from_eps(eps_fn, SDE, min_std=min_std)
    assert isinstance(score, Partial)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 3, 1)), jnp.float32)
    t = jnp.array([0.0, 1e-4, 0.3, 1.0])  # σ(0) = 0 and σ(1e-4) ≈ 1e-3 fall below min_std
    out = np.asarray(jax.jit(lambda s, x, t: s(x, t))(score, x, t))
    std = np.maximum(np.asarray(SDE.std(t)), min_std)
    assert std[0] == std[1] == min_std and std[2] > min_std
    expected = -(2.0 * np.asarray(x) + np.asarray(t)[:, None, None, None]) / std[:, None, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.all(np.isfinite(out))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("method", ["dpm_solver_2m", "dpm_solver_2m_sde", "dpm_solver_3m_sde"])
def test_x0_clip_keeps_the_data_prediction_in_range(method):
    """Data N(3, 0.1²) lies outside [−1, 1]: unclipped, the data-prediction solvers reach it;
    with x0_clip=1 their data predictions stay within [−1, 1], and the samples within 2 %."""
    def score(x, t):  # exact score of N(m·3, m²·0.01 + σ²)
        m, s2 = SDE.mean_coeff(t)[:, None], SDE.std(t)[:, None] ** 2
        return -(x - 3.0 * m) / (0.01 * m**2 + s2)

    run = lambda **kw: np.asarray(sample(jax.random.key(0), Partial(score), SDE, (500, D),
                                         n_steps=15, method=method, clip=None, **kw))
    assert abs(run().mean() - 3.0) < 0.05
    clipped = run(x0_clip=1.0)
    assert np.all(np.abs(clipped) <= 1.02) and clipped.mean() > 0.9


@pytest.mark.parametrize("kwargs, name, exc", [  # The rules test_bad_argument does not cover.
    (dict(n_steps=True), "n_steps", TypeError),  # A bool is not a count.
    (dict(grid="cosine"), "grid", ValueError),
    (dict(init="zeros"), "init", ValueError),
    (dict(record_every=0), "record_every", ValueError),
    (dict(x0_clip=0.0), "x0_clip", ValueError),
])
def test_sample_validation(kwargs, name, exc):
    args = dict(key=jax.random.key(0), score_fn=Partial(gmm_score), sde=SDE, shape=(4, D), n_steps=5)
    args.update(kwargs)
    with pytest.raises(exc, match=rf"\b{name}\b"):
        sample(**args)


# ------------------------------------------------------------------ bad arguments
KEY = jax.random.key(0)


def _neg(x, t):
    return -x


_score = _neg


def _sample(**kwargs):
    args = dict(key=KEY, score_fn=_neg, sde=SDE, shape=(2, 4), n_steps=2)
    return sample(**{**args, **kwargs})


test_bad_argument = raising_cases({
    "snr-1.5": (lambda: _sample(method="predictor_corrector", snr=1.5),
                ValueError, r"snr: got 1\.5, accepted a number in \(0, 1\]"),
    "t_min-below-1e-5-T": (lambda: _sample(sde=VPSDE(T=10.0), t_min=5e-5),
                           ValueError, r"t_min: got 5e-05, accepted \[0\.0001, T=10\)"),
    "clip-0.5": (lambda: _sample(clip=0.5), ValueError, r"clip: got 0\.5, accepted a number >= 1"),
    "sde-None": (lambda: _sample(sde=None), TypeError, r"sde: got NoneType, accepted a jaxguide\.VPSDE"),
    "key-split": (lambda: _sample(key=jax.random.split(KEY, 2)),
                  ValueError, r"key: got keys of shape \(2,\), accepted a single typed key"),
    "indices-negative": (lambda: _sample(shape=(1, 4), indices=[-1]),
                         ValueError, r"indices: got \[-1\], accepted integers in 0\.\."),
    "mesh-str": (lambda: _sample(mesh="cpu"),
                 TypeError, r"mesh: got str, accepted a jax\.sharding\.Mesh"),
    "sample-n_steps-0": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=0),
                         ValueError, r"n_steps: got 0, accepted an integer >= 1"),
    "sample-shape-empty": (lambda: sample(KEY, _score, VPSDE(), (), n_steps=2),
                           ValueError, r"shape: got \(\), accepted"),
    "sample-method": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2, method="rk4"),
                      ValueError, r"method: got 'rk4', accepted euler_maruyama"),
    "sample-key-int": (lambda: sample(0, _score, VPSDE(), (2, 4), n_steps=2),
                       TypeError, r"key: got \w+, accepted a single typed key"),
    "sample-indices": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2,
                                      indices=jnp.arange(3)),
                       ValueError, r"indices: got int32 of shape \(3,\), accepted \(2,\) integers"),
    "sample-score-shape": (lambda: sample(KEY, lambda x, t: x.sum(-1), VPSDE(), (2, 4), n_steps=2),
                           ValueError, r"score_fn: returned shape \(2,\) for x of shape \(2, 4\), "
                           r"accepted x's shape"),
    "sample-shape-huge": (lambda: sample(KEY, _score, VPSDE(), (2**31, 4), n_steps=2),
                          ValueError, r"shape: got \(2147483648, 4\), 8589934592 elements, "
                          r"accepted at most 2147483647"),
    "sample-denoise_last-string": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2,
                                                  denoise_last="no"),
                                   TypeError, r"denoise_last: got 'no', accepted True or False"),
    "time_grid-t_min-above-T": (lambda: time_grid(VPSDE(), 3, t_min=2.0),
                                ValueError, r"t_min: got 2\.0, accepted \[1e-05, T=1\)"),
    "time_grid-kind": (lambda: time_grid(VPSDE(), 2, kind="cosine"),
                       ValueError, r"kind: got 'cosine', accepted uniform"),
    "sample-complex-score": (
        lambda: sample(jax.random.key(0), lambda x, t: (-x).astype(jnp.complex64), VPSDE(), (1, 2),
                       n_steps=2),
        ValueError, r"score_fn: returned dtype complex64, accepted a real floating array"),
    "score-not-an-array": (lambda: _sample(score_fn=lambda x, t: (x, x)),
                           TypeError, r"score_fn: returned a tuple for x of shape \(2, 4\), "
                           r"accepted an array of the shape of x"),
    "n_steps-beyond-int32": (lambda: _sample(n_steps=10**12),
                             ValueError, r"n_steps: got 1000000000000, accepted an integer >= 1 "
                             r"and <= 2147483646"),
    "time_grid-sde": (lambda: time_grid(None, 2), TypeError, r"sde: got NoneType, accepted a jaxguide\.VPSDE"),
    "time_grid-n_steps": (lambda: time_grid(SDE, 0), ValueError, r"n_steps: got 0, accepted"),
    "sample-traced-float-indices": (  # They were cast: two images got the same noise.
        lambda: jax.jit(lambda i: sample(jax.random.key(0), _score, VPSDE(), (2, 3), n_steps=2,
                                         indices=i))(jnp.array([0.7, -1.0])),
        ValueError, r"indices: got float32 of shape \(2,\), accepted \(2,\) integers"),
})


def test_the_ends_of_the_accepted_ranges_work():
    for kwargs in (dict(method="predictor_corrector", snr=1.0), dict(t_min=1e-5, clip=1.0),
                   dict(method="dpm_solver_2m", t_min=1e-5)):
        assert np.all(np.isfinite(np.asarray(_sample(**kwargs)))), kwargs


def test_zero_d_jax_numbers_are_accepted_as_numbers():
    """0-d JAX arrays count as the numbers they hold, like NumPy scalars."""
    x = sample(KEY, _neg, VPSDE(beta_min=jnp.float32(0.1)), (2, 4), n_steps=jnp.array(2),
               clip=jnp.float32(5), t_min=jnp.float32(0.01), snr=jnp.float32(0.1),
               method="predictor_corrector")
    assert x.shape == (2, 4) and bool(jnp.all(jnp.isfinite(x)))
    assert sample(KEY, _neg, VPSDE(), (2, 4), n_steps=2, denoise_last=jnp.bool_(False)
                  ).shape == (2, 4)
    grid = jax.jit(lambda t_min: time_grid(VPSDE(), 4, t_min))(0.01)  # A traced t_min.
    assert grid.shape == (5,) and float(grid[-1]) == pytest.approx(0.01)
    cfg = TrainConfig(lr=jnp.float32(1e-3), steps=jnp.int32(5))
    assert (cfg.lr, cfg.steps) == (pytest.approx(1e-3), 5) and type(cfg.steps) is int


@pytest.mark.parametrize("method", METHODS)
def test_evaluation_times_are_the_times_sample_calls_the_score_at(method):
    seen = []

    def recording_score(x, t):
        jax.debug.callback(lambda t: seen.append(float(np.asarray(t)[0])), t)
        return -x

    sample(KEY, recording_score, SDE, (2, 3), n_steps=7, method=method).block_until_ready()
    expected = evaluation_times(SDE, 7, method)
    assert expected.shape == (7 * NFE_PER_STEP[method],)
    assert sorted(seen) == sorted(expected.tolist())  # Bitwise: the same grid.
