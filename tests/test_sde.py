"""Tests for jaxguide.sde.VPSDE: closed forms, validation, marginal sampling, a Monte-Carlo
check of the forward SDE against its closed-form marginal, and gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import raising_cases
from jaxguide.sde import VPSDE

B_MIN, B_MAX = 0.1, 20.0  # non-default values, so that a mixed-up default would show
TS = np.array([0.0, 1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.77, 1.0], np.float32)


def ref_int_beta(t, b_min=B_MIN, b_max=B_MAX):
    t = np.asarray(t, np.float64)
    return b_min * t + 0.5 * t**2 * (b_max - b_min)


def ref_mean(t, **kw):
    return np.exp(-0.5 * ref_int_beta(t, **kw))


def ref_std(t, **kw):
    return np.sqrt(-np.expm1(-ref_int_beta(t, **kw)))


# ------------------------------------------------------------------ closed forms


def test_closed_forms_float32():
    sde = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    t = jnp.asarray(TS)
    m, s = sde.mean_coeff(t), sde.std(t)
    assert m.dtype == jnp.float32 and s.dtype == jnp.float32
    assert m.shape == s.shape == TS.shape
    np.testing.assert_allclose(np.asarray(m), ref_mean(TS), rtol=2e-6, atol=0)
    # expm1 keeps the relative accuracy of σ even at t = 1e-4 (σ ≈ 3e-3).
    np.testing.assert_allclose(np.asarray(s[1:]), ref_std(TS[1:]), rtol=2e-6, atol=0)
    assert float(s[0]) == 0.0 and float(m[0]) == 1.0
    # σ² + m² = 1.
    np.testing.assert_allclose(np.asarray(m**2 + s**2), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sde.integral_beta(t)), ref_int_beta(TS), rtol=2e-6, atol=0)


def test_std_zero_default_sde():
    sde = VPSDE()
    assert float(sde.std(0.0)) == 0.0
    assert float(sde.std(jnp.zeros(3)).max()) == 0.0
    assert float(sde.mean_coeff(0.0)) == 1.0


def test_beta_and_diffusion():
    sde = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    t = jnp.asarray(TS)
    beta = B_MIN + TS.astype(np.float64) * (B_MAX - B_MIN)
    np.testing.assert_allclose(np.asarray(sde.beta(t)), beta, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sde.diffusion(t)), np.sqrt(beta), rtol=1e-6)
    assert float(sde.beta(0.0)) == pytest.approx(B_MIN)
    assert float(sde.beta(1.0)) == pytest.approx(B_MAX)


def test_drift_broadcasts_per_example_t():
    sde = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 2))
    t = jnp.array([0.0, 0.5, 1.0])
    f = jax.jit(sde.drift)(x, t)
    assert f.shape == x.shape
    beta = B_MIN + np.array([0.0, 0.5, 1.0]) * (B_MAX - B_MIN)
    np.testing.assert_allclose(np.asarray(f), -0.5 * beta[:, None, None, None] * np.asarray(x),
                               rtol=1e-6)
    # A scalar t applies to all examples.
    np.testing.assert_allclose(np.asarray(sde.drift(x, 0.5)), np.asarray(sde.drift(x, jnp.full(3, 0.5))))


def test_hashable_static_and_jittable():
    a, b = VPSDE(), VPSDE()
    assert a == b and hash(a) == hash(b)
    c = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    assert a != c
    assert jax.tree_util.tree_leaves(a) == []  # all fields are static
    with pytest.raises(Exception):
        a.beta_min = 1.0  # frozen
    t = jnp.array([0.2, 0.9])

    f_static = jax.jit(lambda t, sde: sde.std(t), static_argnums=1)
    f_pytree = jax.jit(lambda t, sde: sde.mean_coeff(t))
    for sde in (a, c, a):  # a change of sde must not reuse a stale compilation
        np.testing.assert_allclose(np.asarray(f_static(t, sde)), np.asarray(sde.std(t)), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(f_pytree(t, sde)), np.asarray(sde.mean_coeff(t)),
                                   rtol=1e-6)
    assert not np.allclose(np.asarray(f_static(t, a)), np.asarray(f_static(t, c)))


@pytest.mark.parametrize("kwargs, field", [
    (dict(beta_min=-0.1), "beta_min"),
    (dict(beta_min=0.0), "beta_min"),
    (dict(beta_min=float("nan")), "beta_min"),
    (dict(beta_max=-1.0), "beta_max"),
    (dict(beta_max=float("nan")), "beta_max"),
    (dict(beta_max=float("inf")), "beta_max"),
    (dict(beta_min=5.0, beta_max=1.0), "beta_max"),
    (dict(T=0.0), "T"),
    (dict(T=-1.0), "T"),
    (dict(T=float("nan")), "T"),
])
def test_rejects_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        VPSDE(**kwargs)


# ------------------------------------------------------------------ marginal


def test_marginal_statistics_and_noise():
    sde = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    n, d = 8000, 3
    x0_row = np.array([1.5, -2.0, 0.25], np.float32)
    t_vals = np.array([0.05, 0.3, 1.0], np.float32)
    x0 = jnp.asarray(np.tile(x0_row, (n * len(t_vals), 1)))
    t = jnp.asarray(np.repeat(t_vals, n))
    x_t, eps = jax.jit(sde.marginal)(jax.random.key(1), x0, t)
    assert x_t.shape == eps.shape == x0.shape and x_t.dtype == jnp.float32

    # The returned noise is the one that produced x_t.
    m, s = np.asarray(sde.mean_coeff(t))[:, None], np.asarray(sde.std(t))[:, None]
    np.testing.assert_allclose(np.asarray(x_t), m * np.asarray(x0) + s * np.asarray(eps),
                               rtol=1e-5, atol=1e-6)

    xs = np.asarray(x_t).reshape(len(t_vals), n, d)
    for j, tj in enumerate(t_vals):
        mean_ref, std_ref = ref_mean(tj) * x0_row, ref_std(tj)
        mean_hat, std_hat = xs[j].mean(0), xs[j].std(0, ddof=1)
        # 5 standard errors: σ/√n for the mean, σ/√(2n) for the standard deviation.
        assert np.all(np.abs(mean_hat - mean_ref) < 5 * std_ref / math.sqrt(n)), (tj, mean_hat, mean_ref)
        assert np.all(np.abs(std_hat - std_ref) < 5 * std_ref / math.sqrt(2 * n)), (tj, std_hat, std_ref)
    # ε is standard normal and independent of the batch structure.
    e = np.asarray(eps)
    assert abs(e.mean()) < 5 / math.sqrt(e.size) and abs(e.std() - 1) < 5 / math.sqrt(2 * e.size)


def test_marginal_broadcasts_t_over_image_dims():
    sde = VPSDE()
    x0 = jnp.ones((2, 4, 4, 1))
    t = jnp.array([0.0, 1.0])
    x_t, eps = jax.jit(sde.marginal)(jax.random.key(2), x0, t)
    assert x_t.shape == eps.shape == x0.shape
    np.testing.assert_array_equal(np.asarray(x_t[0]), np.asarray(x0[0]))  # t = 0: x_t = x0
    np.testing.assert_allclose(np.asarray(x_t[1]), ref_mean(1.0, b_min=sde.beta_min, b_max=sde.beta_max)
                               + ref_std(1.0, b_min=sde.beta_min, b_max=sde.beta_max) * np.asarray(eps[1]),
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ forward SDE by Monte Carlo


def _em_discrete_moments(sde, n_steps, x0):
    """Exact mean/variance of the Euler–Maruyama chain (left-point β), in float64."""
    h = sde.T / n_steps
    mean, var = np.array(x0, np.float64), 0.0
    means, variances = [mean], [var]
    for i in range(n_steps):
        b = sde.beta_min + (i * h) * (sde.beta_max - sde.beta_min)
        a = 1.0 - 0.5 * b * h
        mean, var = a * mean, a * a * var + b * h
        means.append(mean)
        variances.append(var)
    return np.array(means), np.sqrt(np.array(variances))


def test_forward_sde_monte_carlo_matches_marginal():
    sde = VPSDE()  # default β ∈ [0.01, 10]
    n_paths, n_steps = 20_000, 500
    h = sde.T / n_steps
    x0 = np.array([1.5, -2.0], np.float32)

    @jax.jit
    def simulate(key):
        def step(x, i):
            t = i * h
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape)
            tb = jnp.full(x.shape[:1], t)
            x = x + sde.drift(x, tb) * h + sde.diffusion(t) * jnp.sqrt(h) * z
            return x, x
        x = jnp.broadcast_to(jnp.asarray(x0), (n_paths, 2))
        _, path = jax.lax.scan(step, x, jnp.arange(n_steps))
        return path  # path[i] is the state at time (i + 1) h

    path = np.asarray(simulate(jax.random.key(3)))
    em_mean, em_std = _em_discrete_moments(sde, n_steps, x0)
    for t in (0.3, 1.0):
        i = round(t / h)
        x = path[i - 1]
        mean_ref, std_ref = ref_mean(t, b_min=sde.beta_min, b_max=sde.beta_max) * x0, \
            ref_std(t, b_min=sde.beta_min, b_max=sde.beta_max)
        # Discretisation allowance: the exact distance between the EM chain's moments and the
        # closed form, plus a margin of the same size.
        disc_mean = 2 * np.abs(em_mean[i] - mean_ref)
        disc_std = 2 * np.abs(em_std[i] - std_ref)
        tol_mean = 5 * std_ref / math.sqrt(n_paths) + disc_mean
        tol_std = 5 * std_ref / math.sqrt(2 * n_paths) + disc_std
        mean_hat, std_hat = x.mean(0), x.std(0, ddof=1)
        assert np.all(np.abs(mean_hat - mean_ref) < tol_mean), (t, mean_hat, mean_ref, tol_mean)
        assert np.all(np.abs(std_hat - std_ref) < tol_std), (t, std_hat, std_ref, tol_std)
        # The two coordinates are independent.
        corr = np.corrcoef(x[:, 0], x[:, 1])[0, 1]
        assert abs(corr) < 5 / math.sqrt(n_paths)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("t", [0.01, 0.1, 0.3, 0.6, 1.0])
def test_gradients_match_analytic_and_finite_differences(t):
    sde = VPSDE(beta_min=B_MIN, beta_max=B_MAX)
    dm = float(jax.grad(sde.mean_coeff)(jnp.float32(t)))
    ds = float(jax.grad(sde.std)(jnp.float32(t)))
    assert math.isfinite(dm) and math.isfinite(ds)
    # Analytic: m' = −½βm, σ' = ½βm²/σ.
    beta = B_MIN + t * (B_MAX - B_MIN)
    m, s = ref_mean(t), ref_std(t)
    assert dm == pytest.approx(-0.5 * beta * m, rel=1e-4)
    # JAX differentiates expm1 as expm1(x) + 1, which cancels in float32 when m² ≪ 1 (t → T):
    # an absolute error of ~½β·6e-8/σ on a derivative that is itself ~1e-4 there.
    assert ds == pytest.approx(0.5 * beta * m * m / s, rel=1e-4, abs=2e-6)
    # Central finite differences (float64 reference formulae, so eps can be small).
    eps = 1e-6
    assert dm == pytest.approx((ref_mean(t + eps) - ref_mean(t - eps)) / (2 * eps), rel=1e-4)
    assert ds == pytest.approx((ref_std(t + eps) - ref_std(t - eps)) / (2 * eps), rel=1e-4, abs=2e-6)
    # … and of the float32 implementation itself.
    # Rounding of the float32 values (spacing ≤ 1.2e-7) bounds the difference's accuracy.
    e32 = min(1e-2, t / 10)
    fd_abs = 2.4e-7 / (2 * e32)
    fd_s = (float(sde.std(t + e32)) - float(sde.std(t - e32))) / (2 * e32)
    fd_m = (float(sde.mean_coeff(t + e32)) - float(sde.mean_coeff(t - e32))) / (2 * e32)
    assert ds == pytest.approx(fd_s, rel=1e-2, abs=fd_abs)
    assert dm == pytest.approx(fd_m, rel=1e-2, abs=fd_abs)


def test_vmap_grad_over_batch():
    sde = VPSDE()
    t = jnp.array([0.05, 0.5, 1.0])
    g = jax.vmap(jax.grad(sde.std))(t)
    assert g.shape == (3,) and bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g > 0))


# ------------------------------------------------------------------ bad arguments
KEY = jax.random.key(0)
SDE = VPSDE()
X0 = jnp.zeros((4, 3, 3, 1))

test_bad_argument = raising_cases({
    "t-negative": (lambda: SDE.std(-0.001),
                   ValueError, r"t: got -0\.001, accepted a finite time >= 0"),
    "t-nan-in-array": (lambda: SDE.mean_coeff(jnp.array([0.5, jnp.nan])),
                       ValueError, r"t: got nan, accepted"),
    "marginal-t-beyond-T": (lambda: SDE.marginal(KEY, X0, 5.0),
                            ValueError, r"t: got 5\.0, accepted a time in \[0, T=1\.0\]"),
    "marginal-t-shape": (lambda: SDE.marginal(KEY, X0, jnp.full((4, 3), 0.5)),
                         ValueError, r"t: got shape \(4, 3\) for a batch of 4 images, "
                         r"accepted \(\) or \(4,\)"),
    "marginal-t-shape-traced": (lambda: jax.jit(SDE.marginal)(KEY, X0, jnp.full((4, 3), 0.5)),
                                ValueError, r"t: got shape \(4, 3\) for a batch of 4"),
    "marginal-x0-int": (lambda: SDE.marginal(KEY, jnp.zeros((4, 3), jnp.int32), 0.5),
                        ValueError, r"x0: got dtype int32, accepted a floating dtype"),
    "marginal-x0-scalar": (lambda: SDE.marginal(KEY, 1.0, 0.5),
                           ValueError, r"x0: got shape \(\), accepted \(B, \.\.\.\)"),
    "key-raw": (lambda: SDE.prior(jax.random.PRNGKey(0), (2,)),
                TypeError, r"key: got \w+, accepted a single typed key"),
    "prior-shape-negative": (lambda: SDE.prior(KEY, (2, -1)),
                             ValueError, r"shape: got \(2, -1\), accepted a tuple of positive"),
    "prior-dtype-not-a-dtype": (lambda: SDE.prior(KEY, (2,), "bogus"),
                                TypeError, r"dtype: got 'bogus', accepted a floating dtype"),
    "prior-dtype-int": (lambda: SDE.prior(KEY, (2,), jnp.int32),
                        ValueError, r"dtype: got dtype int32, accepted a floating dtype"),
    "field-not-a-number": (lambda: VPSDE(beta_min=True),
                           ValueError, r"VPSDE: beta_min: got True, accepted a number in float32's normal range"),
    "field-underflows-float32": (lambda: VPSDE(beta_min=1e-300, beta_max=1e-300, T=1e3),
                                 ValueError, r"beta_min: got 1e-300, accepted a number in float32's "
                                 r"normal range \[1\.18e-38, 3\.4e\+38\]"),
    "schedule-too-large": (lambda: VPSDE(beta_max=1e30), ValueError,
                           r"VPSDE: the schedule's integral of beta over \[0, T\]: got 5e\+29, "
                           r"accepted <= 10000"),
    "vpsde-std-list": (lambda: VPSDE().std([0.1, 0.2]),
                       TypeError, r"t: got \[0\.1, 0\.2\], accepted a real number or a real array"),
    "vpsde-drift-list": (lambda: VPSDE().drift([[1.0]], 0.5),
                         TypeError, r"x: got a list, accepted an array"),
    "vpsde-beta_min": (lambda: VPSDE(beta_min=-1.0), ValueError, r"beta_min: got -1\.0, accepted"),
    "vpsde-beta_max-below-min": (lambda: VPSDE(beta_min=2.0, beta_max=1.0),
                                 ValueError, r"beta_max: got 1\.0 < beta_min=2\.0, accepted >= beta_min"),
})


def test_numpy_scalars_are_accepted_as_floats():
    sde = VPSDE(beta_min=np.float32(0.5), beta_max=np.int64(20), T=np.float64(1.0))
    assert all(type(v) is float for v in (sde.beta_min, sde.beta_max, sde.T))
    assert sde == VPSDE(beta_min=float(np.float32(0.5)), beta_max=20.0)


def test_concrete_times_at_the_ends_are_accepted():
    sde = VPSDE(T=0.1)  # float32(0.1) > 0.1: t = T is compared in t's precision
    x_t, _ = sde.marginal(KEY, X0, jnp.array([0.0, 0.05, 0.1, jnp.float32(0.1)]))
    assert np.all(np.isfinite(np.asarray(x_t)))
    assert float(SDE.std(1.01)) > float(SDE.std(1.0))  # the closed forms extend past T
