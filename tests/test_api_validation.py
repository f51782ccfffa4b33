"""Bad arguments to the Python API (guidance, samplers, VPSDE, pipeline) get an early error
that names the argument and what is accepted, and nothing that validation cannot see (a
traced label out of range) gives a plausible image: it gives NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from conftest import raising_cases
from jaxguide import pipeline
from jaxguide.nets import Evaluator, NoisyClassifier, apply_fn
from jaxguide.samplers import sample
from jaxguide.scores import (add_scores, classifier_grad, classifier_guidance, guidance_term,
                             label_log_prob, score_from_eps)
from jaxguide.sde import VPSDE

KEY = jax.random.key(0)
SDE = VPSDE()
X0 = jnp.zeros((4, 3, 3, 1))


def _score(x, t):
    return -x


def _eps(x, t):
    return x


def _log_probs(x, t):
    """A plain user function (no num_classes to find): 3 classes, from the first 3 of x (B, D).
    Other pixels have no gradient: a poisoned label must reach them all the same."""
    return jax.nn.log_softmax(x[:, :3])


# Built by nets.apply_fn: their models know num_classes (variables are not needed to build).
CLASSIFIER = apply_fn(NoisyClassifier(), {})
EVALUATOR_3 = apply_fn(Evaluator(num_classes=3), {})
PIPE = pipeline.Pipeline(sde=SDE, score_fn=Partial(_score), log_prob_fn=Partial(_log_probs),
                         num_classes=3, image_shape=(4,), metadata={})


def _sample(**kwargs):
    args = dict(key=KEY, score_fn=_score, sde=SDE, shape=(2, 4), n_steps=2)
    return sample(**{**args, **kwargs})


def _guided_at(log_prob_fn, labels=0):
    """The guided score of a batch of 2, evaluated (that is, traced) once."""
    g = classifier_guidance(_score, log_prob_fn, labels, 1.0)
    return g(jnp.ones((2, 4)), jnp.full(2, 0.5))


CASES = {
    # id: (call, exception type, regex the message must match)
    # ---- labels and num_classes
    "labels-beyond-apply_fn-model": (
        lambda: classifier_guidance(_score, CLASSIFIER, jnp.array([10, 42]), 32.0),
        ValueError, r"labels: got 10, accepted \[0, 9\]"),
    "labels-beyond-evaluator": (lambda: classifier_grad(EVALUATOR_3, np.array([0, 3])),
                                ValueError, r"labels: got 3, accepted \[0, 2\]"),
    "label_log_prob-beyond-model": (lambda: label_log_prob(CLASSIFIER, 12),
                                    ValueError, r"labels: got 12, accepted \[0, 9\]"),
    "num_classes-0": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0, num_classes=0),
                      ValueError, r"num_classes: got 0, accepted an integer >= 1"),
    "num_classes-negative": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0,
                                                         num_classes=-3),
                             ValueError, r"num_classes: got -3, accepted an integer >= 1"),
    "num_classes-str": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0, num_classes="10"),
                        TypeError, r"num_classes: got '10', accepted an integer >= 1"),
    "num_classes-float": (lambda: classifier_guidance(_score, _log_probs, 0, 1.0, num_classes=3.0),
                          ValueError, r"num_classes: got 3\.0"),
    "num_classes-not-the-model's": (
        lambda: classifier_guidance(_score, CLASSIFIER, 11, 1.0, num_classes=12),
        ValueError, r"num_classes: got 12, accepted 10 \(the classes of log_prob_fn's model\)"),
    "log_prob_fn-returns-B": (lambda: _guided_at(lambda x, t: x.sum(-1)),
                              ValueError, r"log_prob_fn: returned shape \(2,\) for x of shape "
                              r"\(2, 4\), accepted \(2, K\)"),
    "log_prob_fn-returns-B-K-1": (lambda: _guided_at(lambda x, t: x[:, :, None]),
                                  ValueError, r"log_prob_fn: returned shape \(2, 4, 1\)"),
    # ---- scale
    "scale-overflows-float32": (lambda: classifier_guidance(_score, _log_probs, 0, 1e39),
                                ValueError, r"scale: got 1e\+39, accepted a finite number >= 0 "
                                r"that fits float32 \(<= 3\.4e38\)"),
    "scale-overflows-in-array": (lambda: guidance_term(_log_probs, np.array([1.0, 4e38])),
                                 ValueError, r"scale: got .* that fits float32"),
    "scale-complex": (lambda: classifier_guidance(_score, _log_probs, 0, 1j),
                      ValueError, r"scale: got 1j, accepted a finite number"),
    "scale-str": (lambda: classifier_guidance(_score, _log_probs, 0, "3"),
                  ValueError, r"scale: got '3', accepted a finite number"),
    # ---- functions
    "score_fn-int": (lambda: classifier_guidance(5, _log_probs, 0, 1.0),
                     TypeError, r"score_fn: expected a function of \(x, t\), got int"),
    "log_prob_fn-int": (lambda: classifier_guidance(_score, 5, 0, 1.0),
                        TypeError, r"log_prob_fn: expected a function of \(x, t\), got int"),
    "log_density_fn-int": (lambda: guidance_term(5, 1.0),
                           TypeError, r"log_density_fn: expected a function"),
    "add_scores-int": (lambda: add_scores(_score, 5),
                       TypeError, r"score_fns\[1\]: expected a function"),
    "sample-score_fn-int": (lambda: _sample(score_fn=5),
                            TypeError, r"score_fn: expected a function of \(x, t\), got int"),
    "score_from_eps-eps_fn-int": (lambda: score_from_eps(5, SDE),
                                  TypeError, r"eps_fn: expected a function"),
    # ---- sample and score_from_eps
    "snr-inf": (lambda: _sample(method="predictor_corrector", snr=float("inf")),
                ValueError, r"snr: got inf, accepted a number in \(0, 1\]"),
    "snr-1e30": (lambda: _sample(method="predictor_corrector", snr=1e30),
                 ValueError, r"snr: got 1e\+30, accepted a number in \(0, 1\]"),
    "snr-1.5": (lambda: _sample(snr=1.5), ValueError, r"snr: got 1\.5"),
    "t_min-denormal": (lambda: _sample(method="dpm_solver_2m", t_min=1e-45),
                       ValueError, r"t_min: got 1e-45, accepted \[1e-05, T=1\)"),
    "t_min-1e-6": (lambda: _sample(t_min=1e-6), ValueError, r"t_min: got 1e-06, accepted \[1e-05"),
    "t_min-scales-with-T": (lambda: _sample(sde=VPSDE(T=10.0), t_min=5e-5),
                            ValueError, r"t_min: got 5e-05, accepted \[0\.0001, T=10\)"),
    "clip-1e-50": (lambda: _sample(clip=1e-50),
                   ValueError, r"clip: got 1e-50, accepted a number >= 1 .* or None"),
    "clip-0.5": (lambda: _sample(clip=0.5), ValueError, r"clip: got 0\.5, accepted a number >= 1"),
    "min_std-nan": (lambda: score_from_eps(_eps, SDE, min_std=float("nan")),
                    ValueError, r"min_std: got nan, accepted a number in \[1\.2e-38, 1\]"),
    "min_std-0": (lambda: score_from_eps(_eps, SDE, min_std=0.0), ValueError, r"min_std: got 0\.0"),
    "min_std-underflows": (lambda: score_from_eps(_eps, SDE, min_std=1e-50),
                           ValueError, r"min_std: got 1e-50"),
    "min_std-2": (lambda: score_from_eps(_eps, SDE, min_std=2.0), ValueError, r"min_std: got 2\.0"),
    "min_std-str": (lambda: score_from_eps(_eps, SDE, min_std="0.01"),
                    ValueError, r"min_std: got '0\.01'"),
    "score_from_eps-sde-None": (lambda: score_from_eps(_eps, None),
                                TypeError, r"sde: expected a jaxguide\.VPSDE, got NoneType"),
    "sample-sde-None": (lambda: _sample(sde=None),
                        TypeError, r"sde: expected a jaxguide\.VPSDE, got NoneType"),
    "sample-key-split": (lambda: _sample(key=jax.random.split(KEY, 2)),
                         ValueError, r"key: got keys of shape \(2,\), accepted a single key"),
    # ---- VPSDE
    "std-t-negative": (lambda: SDE.std(-0.001),
                       ValueError, r"t: got -0\.001, accepted a finite time >= 0"),
    "std-t-nan": (lambda: SDE.std(float("nan")), ValueError, r"t: got nan, accepted"),
    "mean_coeff-t-nan-in-array": (lambda: SDE.mean_coeff(jnp.array([0.5, jnp.nan])),
                                  ValueError, r"t: got nan"),
    "beta-t-negative": (lambda: SDE.beta(np.array([-1.0])), ValueError, r"t: got -1\.0"),
    "log_snr-t-inf": (lambda: SDE.log_snr(float("inf")), ValueError, r"t: got inf"),
    "marginal-t-beyond-T": (lambda: SDE.marginal(KEY, X0, 5.0),
                            ValueError, r"t: got 5\.0, accepted a time in \[0, T=1\.0\]"),
    "marginal-t-negative": (lambda: SDE.marginal(KEY, X0, jnp.array([0.1, 0.2, -0.001, 0.3])),
                            ValueError, r"t: got -0\.001"),
    "marginal-t-nan": (lambda: SDE.marginal(KEY, X0, float("nan")), ValueError, r"t: got nan"),
    "marginal-t-shape": (lambda: SDE.marginal(KEY, X0, jnp.full((4, 3), 0.5)),
                         ValueError, r"t: got shape \(4, 3\) for a batch of 4 images, "
                         r"accepted \(\) or \(4,\)"),
    "marginal-t-shape-traced": (lambda: jax.jit(SDE.marginal)(KEY, X0, jnp.full((4, 3), 0.5)),
                                ValueError, r"t: got shape \(4, 3\) for a batch of 4"),
    "marginal-x0-int": (lambda: SDE.marginal(KEY, jnp.zeros((4, 3), jnp.int32), 0.5),
                        ValueError, r"x0: got dtype int32, accepted a floating dtype"),
    "marginal-x0-scalar": (lambda: SDE.marginal(KEY, 1.0, 0.5),
                           ValueError, r"x0: got shape \(\), accepted \(B, \.\.\.\)"),
    "marginal-key-int": (lambda: SDE.marginal(0, X0, 0.5), TypeError, r"key: expected a typed key"),
    "prior-shape-negative": (lambda: SDE.prior(KEY, (2, -1)),
                             ValueError, r"shape: got \(2, -1\), accepted a tuple of positive"),
    "prior-key-raw": (lambda: SDE.prior(jax.random.PRNGKey(0), (2,)),
                      TypeError, r"key: expected a typed key"),
    "prior-dtype-int": (lambda: SDE.prior(KEY, (2,), jnp.int32),
                        ValueError, r"dtype: got dtype int32, accepted a floating dtype"),
    "vpsde-bool": (lambda: VPSDE(beta_min=True),
                   ValueError, r"beta_min must be a finite number > 0, got True"),
    "vpsde-str": (lambda: VPSDE(T="1"), ValueError, r"\bT must be a finite number > 0, got '1'"),
    "vpsde-beta-underflows-float32": (lambda: VPSDE(beta_min=1e-300, beta_max=1e-300, T=1e3),
                                      ValueError, r"beta_min must lie in float32's normal "
                                      r"range \[1\.18e-38, 3\.4e\+38\], got 1e-300"),
    "vpsde-T-overflows-float32": (lambda: VPSDE(T=1e300), ValueError,
                                  r"\bT must lie in float32's normal range .*, got 1e\+300"),
    "vpsde-huge-schedule": (lambda: VPSDE(beta_max=1e30), ValueError,
                            r"VPSDE: the schedule's integral of beta over \[0, T\] must be <= "
                            r"10000, got 5e\+29"),
    # ---- pipeline.generate
    "generate-scalar-labels": (lambda: pipeline.generate(KEY, PIPE, 3, 1.0, n_steps=2),
                               ValueError, r"labels: got shape \(\), accepted a 1-D sequence of "
                               r"class indices"),
    "generate-2d-labels": (lambda: pipeline.generate(KEY, PIPE, [[0, 1]], 1.0, n_steps=2),
                           ValueError, r"labels: got shape \(1, 2\), accepted a 1-D sequence"),
    "generate-no-labels": (lambda: pipeline.generate(KEY, PIPE, [], 1.0, n_steps=2),
                           ValueError, r"labels: got an empty sequence, accepted at least one"),
    "generate-string-labels": (lambda: pipeline.generate(KEY, PIPE, ["3"], 1.0, n_steps=2),
                               ValueError, r"labels: got \['3'\], accepted a 1-D sequence"),
    "generate-ragged-labels": (lambda: pipeline.generate(KEY, PIPE, [[1, 2], [3]], 1.0, n_steps=2),
                               ValueError, r"labels: .*inhomogeneous.*; accepted a 1-D sequence"),
    "generate-huge-label": (lambda: pipeline.generate(KEY, PIPE, [2**40], 1.0, n_steps=2),
                            ValueError, r"labels: got 1099511627776, accepted \[0, "),
    "generate-fractional-label": (lambda: pipeline.generate(KEY, PIPE, [3.5], 1.0, n_steps=2),
                                  ValueError, r"labels: got \[3\.5\] .*accepted integer class"),
    "generate-pipe-none": (lambda: pipeline.generate(KEY, None, [1], 1.0, n_steps=2),
                           TypeError, r"pipe: got NoneType, accepted a Pipeline"),
    "load_pipeline-none": (lambda: pipeline.load_pipeline(None),
                           TypeError, r"checkpoint_dir: got None, accepted a path"),
    "sample-indices-negative": (lambda: sample(KEY, _score, SDE, (1, 4), n_steps=2, indices=[-1]),
                                ValueError, r"indices: got \[-1\], accepted integers in 0\.\."),
    "sample-indices-float": (lambda: sample(KEY, _score, SDE, (1, 4), n_steps=2, indices=[0.5]),
                             ValueError, r"indices: got \[0\.5\], accepted integers"),
    "sample-mesh-str": (lambda: sample(KEY, _score, SDE, (1, 4), n_steps=2, mesh="cpu"),
                        TypeError, r"mesh: got str, accepted a jax\.sharding\.Mesh"),
    "classifier-empty-batch": (lambda: jax.eval_shape(NoisyClassifier().init, KEY,
                                                      jnp.zeros((0, 28, 28, 1)), jnp.zeros(0)),
                               ValueError, r"x: got shape \(0, 28, 28, 1\), accepted .*B >= 1"),
}


test_api_bad_input = raising_cases(CASES)


# ------------------------------------------------------------------ what is accepted


def test_out_of_range_label_found_only_when_traced_gives_nan_not_an_unguided_image():
    # A plain function (no num_classes): label 5 of 3 passes construction, but the sample
    # must not be the unguided one (an out-of-range gather has a zero gradient).
    guided = classifier_guidance(_score, _log_probs, jnp.array([1, 5]), 32.0)
    x = np.asarray(_sample(score_fn=guided))
    assert np.all(np.isfinite(x[0])) and np.all(np.isnan(x[1]))
    unguided = np.asarray(_sample())
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


def test_vpsde_accepts_numpy_scalars_as_floats():
    sde = VPSDE(beta_min=np.float32(0.5), beta_max=np.int64(20), T=np.float64(1.0))
    assert all(type(v) is float for v in (sde.beta_min, sde.beta_max, sde.T))
    assert sde == VPSDE(beta_min=float(np.float32(0.5)), beta_max=20.0)


def test_concrete_times_at_the_ends_are_accepted():
    sde = VPSDE(T=0.1)  # float32(0.1) > 0.1: t = T is compared in t's precision
    x_t, _ = sde.marginal(KEY, X0, jnp.array([0.0, 0.05, 0.1, jnp.float32(0.1)]))
    assert np.all(np.isfinite(np.asarray(x_t)))
    assert float(SDE.std(1.01)) > float(SDE.std(1.0))  # the closed forms extend past T
    # Boundary values of the sampler's ranges work.
    for kwargs in (dict(method="predictor_corrector", snr=1.0), dict(t_min=1e-5, clip=1.0),
                   dict(method="dpm_solver_2m", t_min=1e-5)):
        assert np.all(np.isfinite(np.asarray(_sample(**kwargs)))), kwargs
    assert score_from_eps(_eps, SDE, min_std=1.0) is not None


def test_every_public_name_resolves_and_is_documented():
    import jaxguide

    for name in jaxguide.__all__:
        obj = getattr(jaxguide, name)
        assert (getattr(obj, "__doc__", None) or "").strip(), name


def test_images_are_saved_from_the_top_level_api(tmp_path):
    """jaxguide.save_grid and jaxguide.save_gif are viz's (imported on first use)."""
    import jaxguide
    from jaxguide import viz

    assert jaxguide.save_grid is viz.save_grid and jaxguide.save_gif is viz.save_gif
    assert {"save_grid", "save_gif"} <= set(jaxguide.__all__)
    images = np.zeros((2, 28, 28, 1), np.float32)
    assert viz.made_here(jaxguide.save_grid(images, [0, 1], tmp_path / "grid.png", ncol=2))
    assert viz.made_here(jaxguide.save_gif(images[None], tmp_path / "t.gif", ncol=2))


def test_generate_defaults_to_sample_py_steps(monkeypatch):
    """generate needs no n_steps: it takes DEFAULT_STEPS, sample.py's --steps default."""
    from conftest import load_script

    seen = {}

    def recording_sample(key, score_fn, sde, shape, *, n_steps, **kwargs):
        seen["n_steps"] = n_steps
        return jnp.zeros(shape)

    monkeypatch.setattr(pipeline, "sample", recording_sample)
    pipeline.generate(KEY, PIPE, [0, 2], 1.0)
    assert seen["n_steps"] == pipeline.DEFAULT_STEPS == 50
    assert load_script("sample.py").parse_args([]).steps == pipeline.DEFAULT_STEPS
