"""pipeline: loading the bundled models, generate's arguments, and what a run computes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.tree_util import Partial

from conftest import raising_cases
from jaxguide import pipeline, samplers
from jaxguide.checkpoint import CheckpointError
from jaxguide.samplers import evaluation_times
from jaxguide.sde import VPSDE

KEY = jax.random.key(0)
SDE = VPSDE()


def _score(x, t):
    return -x


def _log_probs(x, t):
    return jax.nn.log_softmax(x[:, :3])


PIPE = pipeline.Pipeline(sde=SDE, score_fn=Partial(_score), log_prob_fn=Partial(_log_probs),
                         num_classes=3, image_shape=(4,), metadata={})

test_bad_argument = raising_cases({
    "generate-scalar-labels": (lambda: pipeline.generate(KEY, PIPE, 1, 1.0, n_steps=2),
                               ValueError, r"labels: got shape \(\), accepted a 1-D sequence of "
                               r"at least one class index in 0\.\.2"),
    "generate-no-labels": (lambda: pipeline.generate(KEY, PIPE, [], 1.0, n_steps=2),
                           ValueError, r"labels: got shape \(0,\), accepted a 1-D sequence"),
    "generate-string-labels": (lambda: pipeline.generate(KEY, PIPE, ["3"], 1.0, n_steps=2),
                               ValueError, r"labels: got \['3'\], accepted integer class indices"),
    "generate-label-beyond-the-classes": (lambda: pipeline.generate(KEY, PIPE, [3], 1.0, n_steps=2),
                                          ValueError, r"labels: got 3, accepted \[0, 2\]"),
    "generate-pipe-none": (lambda: pipeline.generate(KEY, None, [1], 1.0, n_steps=2),
                           TypeError, r"pipe: got NoneType, accepted a Pipeline"),
    "load_pipeline-none": (lambda: pipeline.load_pipeline(None),
                           TypeError, r"checkpoint_dir: got None, accepted a path"),
    "load_pipeline-missing": (lambda: pipeline.load_pipeline("/nonexistent/jaxguide-ck"),
                              CheckpointError, r"/nonexistent/jaxguide-ck: not found"),
})


def test_generate_checks_labels_before_sampling(tiny_checkpoints, monkeypatch):
    pipe = pipeline.load_pipeline(tiny_checkpoints)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the labels")

    monkeypatch.setattr(pipeline, "sample", no_sampling)
    with pytest.raises(ValueError, match=r"labels: got 10, accepted \[0, 9\]"):
        pipeline.generate(KEY, pipe, jnp.array([3, 10]), 4.0, n_steps=2)
    with pytest.raises(ValueError, match=r"scale: got -1\.0"):
        pipeline.generate(KEY, pipe, jnp.array([3]), -1.0, n_steps=2)


def test_generate_defaults_to_sample_py_sampling(monkeypatch):
    """generate needs no sampler: it takes the guidance's DEFAULT_SAMPLING (sample.py's);
    a sampler named without steps or grid gets DEFAULT_STEPS and its own grid."""
    seen = []
    monkeypatch.setattr(pipeline, "sample", lambda key, score_fn, sde, shape, **kw:
                        seen.append((kw["method"], kw["n_steps"], kw["grid"])) or jnp.zeros(shape))
    pipeline.generate(KEY, PIPE, [0, 2], 1.0)
    pipeline.generate(KEY, PIPE, [0, 2], 1.0, method="heun")
    assert seen == [pipeline.DEFAULT_SAMPLING["classifier"],
                    ("heun", pipeline.DEFAULT_STEPS, samplers.DEFAULT_GRID["heun"])]
    free = pipeline.DEFAULT_SAMPLING["free"]
    assert pipeline.sampling("free") == pipeline.sampling("both") == free
    assert pipeline.sampling("free", n_steps=7, grid="uniform") == (free[0], 7, "uniform")


def test_network_evaluations_count_what_generate_computes():
    em = dict(n_steps=4, method="euler_maruyama")
    count = lambda **kw: pipeline.network_evaluations(PIPE, 1.0, **{**em, **kw})
    assert count(guidance="classifier") == {"nfe": 4, "classifier_nfe": 4}
    assert count(guidance="free") == {"nfe": 8, "classifier_nfe": 0}
    # Uniform grid from T = 1 to t_min = 1e-3: the steps start at t = 1, 0.75025, 0.5005, 0.25075.
    assert count(guidance="free", interval=(0.5, 1.0)) == {"nfe": 7, "classifier_nfe": 0}
    assert count(guidance="both", interval=(0.0, 0.3)) == {"nfe": 5, "classifier_nfe": 1}
    assert count(guidance="classifier", method="heun") == {"nfe": 8, "classifier_nfe": 8}
    assert pipeline.network_evaluations(PIPE, 0.0, guidance="free", **em)["nfe"] == 4
    ts = evaluation_times(SDE, 4)  # An interval's ends are in it, to the float32 bit.
    assert count(guidance="free", interval=(ts[2], ts[1]))["nfe"] == 6


@functools.cache
def _tiny_variables(task):
    """Variables of the tiny preset's model for `task`, made once."""
    from jaxguide.configs import get_config
    from jaxguide.nets import make_model

    cfg = get_config(task, preset="tiny")
    return make_model(cfg.model, cfg.kwargs).init(KEY, jnp.zeros((1, 28, 28, 1)), jnp.zeros(1))


def _checkpoints_of(root, datasets, **denoiser_meta):
    """denoiser/ and classifier/ of the tiny presets, recorded as trained on `datasets`
    (the denoiser's metadata with `denoiser_meta` added)."""
    from jaxguide import checkpoint, training
    from jaxguide.configs import get_config

    for task, dataset in zip(("denoiser", "classifier"), datasets):
        cfg = get_config(task, preset="tiny").replace(dataset=dataset)
        variables = _tiny_variables(task)
        extra = denoiser_meta if task == "denoiser" else {}
        checkpoint.save_model(root / task, variables,
                              {**training.model_metadata(cfg, (28, 28, 1)), "step": 0, **extra})
    return root


def test_a_pipeline_knows_its_dataset(tiny_checkpoints, tmp_path):
    assert pipeline.load_pipeline(tiny_checkpoints).dataset.name == "mnist"
    pipe = pipeline.load_pipeline(_checkpoints_of(tmp_path / "f", ["fashion_mnist"] * 2))
    assert pipe.dataset.class_names[9] == "Ankle boot" and pipe.dataset.num_classes == 10
    with pytest.raises(CheckpointError, match="the denoiser was trained with dataset 'mnist', "
                                              "the classifier with 'fashion_mnist'"):
        pipeline.load_pipeline(_checkpoints_of(tmp_path / "m", ["mnist", "fashion_mnist"]))


def test_a_denoiser_carries_its_tuned_guidance_scales_and_sampling(tmp_path, monkeypatch):
    """metadata "guidance_scales" and "sampling" override DEFAULT_SCALES and DEFAULT_SAMPLING
    for that guidance only, in generate and network_evaluations alike."""
    pipe = pipeline.load_pipeline(_checkpoints_of(
        tmp_path / "t", ["mnist"] * 2, guidance_scales={"free": 3},
        sampling={"free": ["euler_maruyama", 7, "quadratic"]}))
    assert pipe.default_scales == {**pipeline.DEFAULT_SCALES, "free": 3.0}
    assert pipe.default_sampling == {**pipeline.DEFAULT_SAMPLING,
                                     "free": ("euler_maruyama", 7, "quadratic")}
    seen = []
    monkeypatch.setattr(pipeline, "sample", lambda key, score_fn, sde, shape, **kw:
                        seen.append((kw["method"], kw["n_steps"], kw["grid"])) or jnp.zeros(shape))
    pipeline.generate(KEY, pipe, [0], 1.0, guidance="free")
    assert seen == [("euler_maruyama", 7, "quadratic")]
    assert pipeline.network_evaluations(pipe, 1.0, guidance="free")["nfe"] == 14
    for bad in (dict(guidance_scales={"free": -1}),
                dict(sampling={"free": ["euler_maruyama", 0, "quadratic"]})):
        name = next(iter(bad))
        with pytest.raises(CheckpointError, match=f"{name}: got .*; accepted"):
            pipeline.load_pipeline(_checkpoints_of(tmp_path / "b", ["mnist"] * 2, **bad))


def test_sample_cli_takes_the_dataset_of_its_checkpoints(tmp_path):
    from conftest import run_cli

    ck = _checkpoints_of(tmp_path / "ck", ["fashion_mnist"] * 2)
    r = run_cli("sample.py", "--dataset", "mnist", "--checkpoint-dir", str(ck), "--steps", "2")
    assert r.returncode == 2 and "--dataset: got mnist, but --checkpoint-dir" in r.stderr
    r = run_cli("sample.py", "--dataset", "cifar10")
    assert r.returncode == 2
    assert "--dataset: got cifar10, which has no bundled checkpoints" in r.stderr


@pytest.mark.slow  # About a minute on 2 cores: three models compile for a new shape.
def test_rgb_dataset_end_to_end(tmp_path):
    """CIFAR-10's shape on fake data: one training step of each model, a 2-step guided sample,
    the evaluator's metrics and an RGB grid: nothing assumes 28 x 28 x 1."""
    import numpy as np

    from jaxguide import metrics, training, viz
    from jaxguide.configs import get_config

    rng = np.random.default_rng(0)
    split = lambda n: (rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32),
                       np.arange(n, dtype=np.int32) % 10)
    fake = (split(40), split(40))
    for task in ("denoiser", "classifier", "evaluator"):
        cfg = get_config(task, preset="tiny").replace(dataset="cifar10", steps=1, batch_size=8)
        training.train(cfg, tmp_path / task, dataset=fake, progress=False)
    ck = tmp_path / "ck"
    ck.mkdir()
    for task in ("denoiser", "classifier", "evaluator"):
        (tmp_path / task / "model").rename(ck / task)
    pipe = pipeline.load_pipeline(ck)
    assert pipe.dataset.name == "cifar10" and pipe.image_shape == (32, 32, 3)
    labels = jnp.arange(20) % 10
    images = np.asarray(pipeline.generate(KEY, pipe, labels, 0.5, guidance="free", n_steps=2))
    assert images.shape == (20, 32, 32, 3) and np.all(np.isfinite(images))
    evaluator = metrics.Evaluator(ck / "evaluator")
    res = metrics.evaluate_samples(evaluator, images, labels, evaluator.reference())
    assert 0 <= res["accuracy"] <= 1 and np.isfinite(res["fd"]) and np.isfinite(res["class_fd"])
    viz.save_grid(images, np.asarray(labels), tmp_path / "grid.png", ncol=2,
                  class_names=pipe.dataset.class_names)
