"""Bad inputs to the figure, metric and data helpers (viz, metrics, data) get a clear, early
error naming the argument: never a traceback from numpy or matplotlib, never a silently
wrong image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import raising_cases
from test_data import write_dataset, write_idx
from jaxguide import data, metrics, nets, viz
from jaxguide.data import DataError

# -------------------------------------------------------------------------------- viz

IMGS = np.zeros((2, 28, 28, 1))
NAN_IMGS = np.full((2, 28, 28, 1), np.nan)
TS = np.array([0.1, 0.5])
NOWHERE = Path("/nonexistent-jaxguide")  # A check that is missed fails on writing, not here.


def _in(name):
    return NOWHERE / name


VIZ_CASES = {
    "save_grid-nan": (lambda: viz.save_grid(NAN_IMGS, [0, 1], _in("g.png"), ncol=2),
                      ValueError, r"images: contain NaN or inf, accepted finite"),
    "save_grid-ncol-0": (lambda: viz.save_grid(IMGS, [0, 1], _in("g.png"), ncol=0),
                         ValueError, r"ncol: got 0, accepted an integer >= 1"),
    "save_grid-few-labels": (lambda: viz.save_grid(IMGS, [0], _in("g.png"), ncol=1),
                             ValueError, r"labels: got shape \(1,\), accepted \(2,\)"),
    "save_grid-no-images": (lambda: viz.save_grid(np.zeros((0, 28, 28, 1)), [], _in("g.png"), 2),
                            ValueError, r"images: got shape \(0, 28, 28, 1\), accepted \(N, H, W, 1\)"),
    "save_grid-rank": (lambda: viz.save_grid(np.zeros((2, 28, 28)), [0, 1], _in("g.png"), 2),
                       ValueError, r"images: got shape \(2, 28, 28\), accepted \(N, H, W, 1\)"),
    "save_grid-not-numbers": (lambda: viz.save_grid([["a"]], [0], _in("g.png"), 1),
                              TypeError, r"images: got list of dtype <U1, accepted a numeric array"),
    "tile-uint8": (lambda: viz.tile(np.zeros((2, 28, 28, 1), np.uint8), 2),  # Was all white.
                   TypeError, r"images: got ndarray of dtype uint8, accepted a numeric array "
                   r"\(N, H, W, 1\) of floats in \[-1, 1\]"),
    "to_uint8-uint8": (lambda: viz.to_uint8(np.zeros((2, 28, 28, 1), np.uint8)),
                       TypeError, r"images: got dtype uint8, accepted floats in \[-1, 1\]"),
    "save_gif-hold-huge": (lambda: viz.save_gif(IMGS[None], _in("t.gif"), 2, hold=10**12),
                           ValueError, r"hold: got 1000000000000, accepted an integer >= 0 and "
                           r"<= 10000"),
    "save_gif-scale-huge": (lambda: viz.save_gif(IMGS[None], _in("t.gif"), 2, scale=10**6),
                            ValueError, r"scale: got 1000000, accepted an integer >= 1 and <= 64"),
    "tile-ncol-0": (lambda: viz.tile(IMGS, 0), ValueError, r"ncol: got 0, accepted an integer >= 1"),
    "tile-ncol-float": (lambda: viz.tile(IMGS, 2.0), ValueError, r"ncol: got 2\.0, accepted an integer"),
    "tile-ncol-str": (lambda: viz.tile(IMGS, "2"), TypeError, r"ncol: got '2', accepted an integer"),
    "tile-inf": (lambda: viz.tile(np.full((1, 4, 4, 1), np.inf), 1),
                 ValueError, r"images: contain NaN or inf"),
    "to_uint8-nan": (lambda: viz.to_uint8(NAN_IMGS), ValueError, r"images: contain NaN or inf"),
    "to_uint8-rank": (lambda: viz.to_uint8(np.zeros((28, 28))),
                      ValueError, r"images: got shape \(28, 28\), accepted \(\.\.\., H, W, 1\)"),
    "save_gif-no-frames": (lambda: viz.save_gif(np.zeros((0, 2, 28, 28, 1)), _in("t.gif"), 2),
                           ValueError, r"frames: got shape \(0, 2, 28, 28, 1\), accepted \(F, N, H, W, 1\)"),
    "save_gif-rank": (lambda: viz.save_gif(IMGS, _in("t.gif"), 2),
                      ValueError, r"frames: got shape \(2, 28, 28, 1\), accepted \(F, N, H, W, 1\)"),
    "save_gif-nan": (lambda: viz.save_gif(NAN_IMGS[None], _in("t.gif"), 2),
                     ValueError, r"frames: contain NaN or inf"),
    "save_gif-ncol-0": (lambda: viz.save_gif(IMGS[None], _in("t.gif"), 0),
                        ValueError, r"ncol: got 0, accepted an integer >= 1"),
    "save_gif-scale-0": (lambda: viz.save_gif(IMGS[None], _in("t.gif"), 2, scale=0),
                         ValueError, r"scale: got 0, accepted an integer >= 1"),
    "classifier_over_time-ts": (lambda: viz.plot_classifier_over_time(
        TS[:1], IMGS, np.full((2, 10), 0.1), _in("c.png"), 3),
        ValueError, r"ts: got shape \(1,\), accepted \(2,\)"),
    "classifier_over_time-probs-shape": (lambda: viz.plot_classifier_over_time(
        TS, IMGS, np.full((3, 10), 0.1), _in("c.png"), 3),
        ValueError, r"probs: got shape \(3, 10\), accepted \(2, K\)"),
    "classifier_over_time-probs-nan": (lambda: viz.plot_classifier_over_time(
        TS, IMGS, np.full((2, 10), np.nan), _in("c.png"), 3),
        ValueError, r"probs: contain NaN or inf"),
    "classifier_over_time-x_ts-nan": (lambda: viz.plot_classifier_over_time(
        TS, NAN_IMGS, np.full((2, 10), 0.1), _in("c.png"), 3),
        ValueError, r"x_ts: contain NaN or inf"),
    "classifier_over_time-true_label": (lambda: viz.plot_classifier_over_time(
        TS, IMGS, np.full((2, 10), 0.1), _in("c.png"), 10),
        ValueError, r"true_label: got 10, accepted an integer >= 0 and <= 9"),
    "gradient_maps-labels": (lambda: viz.plot_gradient_maps(
        TS, IMGS, np.zeros((2, 2, 28, 28, 1)), _in("m.png"), [3]),
        ValueError, r"labels: got shape \(1,\), accepted \(2,\): one per row of grads"),
    "gradient_maps-grads-shape": (lambda: viz.plot_gradient_maps(
        TS, IMGS, np.zeros((1, 3, 28, 28, 1)), _in("m.png"), [3]),
        ValueError, r"grads: got shape \(1, 3, 28, 28, 1\), accepted \(R, \*x_ts.shape\)"),
    "gradient_maps-grads-nan": (lambda: viz.plot_gradient_maps(
        TS, IMGS, np.full((1, 2, 28, 28, 1), np.nan), _in("m.png"), [3]),
        ValueError, r"grads: contain NaN or inf"),
    "accuracy_vs_scale-lengths": (lambda: viz.plot_accuracy_vs_scale([0, 1, 2], [0.5, 0.6],
                                                                     _in("a.png")),
                                  ValueError, r"accuracies: got shape \(2,\) for scales of shape \(3,\)"),
    "accuracy_vs_scale-nan": (lambda: viz.plot_accuracy_vs_scale([0, 1], [0.5, np.nan],
                                                                 _in("a.png")),
                              ValueError, r"accuracies: got \[0\.5 +nan\], accepted values in \[0, 1\]"),
    "plot_losses-no-step": (lambda: viz.plot_losses([{"loss": 1.0}], _in("l.png")),
                            ValueError, r"records: accepted a list of dicts that each hold a 'step'"),
}

test_viz_bad_input = raising_cases(VIZ_CASES)


def test_viz_good_input_still_draws(tmp_path):
    imgs = np.linspace(-1, 1, 3 * 28 * 28).reshape(3, 28, 28, 1)
    assert viz.save_grid(imgs, [1, 1, 2], tmp_path / "g.png", ncol=2).is_file()
    assert viz.save_gif(np.stack([imgs, imgs]), tmp_path / "t.gif", ncol=2, hold=0).is_file()
    assert viz.tile(imgs, 2).shape == (2 * 30 + 2, 2 * 30 + 2)


# ---------------------------------------------------------------------------- metrics

FEATS = np.random.default_rng(0).normal(size=(6, 3))
LABELS = np.array([0, 0, 1, 1, 2, 2])
REF = metrics.reference_stats(FEATS, LABELS)


class _NeverRun:
    """An evaluator stand-in: argument errors must come before any evaluation."""

    model = nets.Evaluator()  # Read for its num_classes only.

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
}

test_metrics_bad_input = raising_cases(METRICS_CASES)


def test_reference_stats_keys_still_match_the_classes():
    assert sorted(REF) == ["cov", "cov_0", "cov_1", "cov_2", "mu", "mu_0", "mu_1", "mu_2"]
    assert metrics.class_frechet_distance(FEATS, LABELS, REF) == pytest.approx(0.0, abs=1e-8)


# ------------------------------------------------------------------------------- data

X2 = np.zeros((2, 28, 28, 1), np.float32)
Y2 = np.array([0, 1])

DATA_CASES = {
    "read_idx-None": (lambda: data.read_idx(None),
                      TypeError, r"path: got None, accepted a path \(str or os\.PathLike\)"),
    "check_dataset-empty-test-labels": (lambda: data.check_dataset(((X2, Y2), (X2, np.array([], int)))),
                                        ValueError, r"dataset: test labels: got int\d+ \(0,\), "
                                                    r"accepted integers \(2,\), one per test image"),
    "check_dataset-short-train-labels": (lambda: data.check_dataset(((X2, Y2[:1]), (X2, Y2))),
                                         ValueError, r"dataset: train labels: got int\d+ \(1,\), "
                                                     r"accepted integers \(2,\)"),
    "load_mnist-blank-data_dir": (lambda: data.load_mnist("train", " "),
                                  ValueError, r"data_dir: got ' ', accepted a non-empty path"),
}

test_data_bad_input = raising_cases(DATA_CASES)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)


@pytest.fixture
def env_dir(monkeypatch):
    """Sets JAXGUIDE_DATA_DIR for one test: env_dir(path)."""
    return lambda value: monkeypatch.setenv(data.ENV_DATA_DIR, str(value))


def test_env_data_dir_missing_names_the_variable(env_dir):
    env_dir("/nonexistent")
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR='/nonexistent': MNIST data dir "
                                        r"/nonexistent not found"):
        data.load_mnist("train")


def test_env_data_dir_blank_names_the_variable_and_shows_the_blank(env_dir):
    env_dir(" ")
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR: got ' ', accepted a folder path"):
        data.load_mnist("test")


def test_env_data_dir_bad_file_names_the_variable(env_dir, tmp_path):
    write_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", b"\x00\x00\x08\x01garbage")
    env_dir(tmp_path)
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR='.*': IDX file .*t10k-labels"):
        data.load_mnist("test")


def test_data_dir_argument_beats_a_bad_env_var(env_dir, tmp_path):
    write_dataset(tmp_path, gz=False)
    env_dir(" ")
    assert len(data.load_mnist("test", tmp_path)[0]) == 3


@pytest.mark.parametrize("split", data.SPLITS)
@pytest.mark.parametrize("from_env", [False, True], ids=["argument", "env"])
def test_an_empty_split_names_the_data_dir_and_the_split(tmp_path, env_dir, split, from_env):
    write_dataset(tmp_path, gz=False)
    images_name, labels_name = data._IDX_FILES[split]
    write_idx(tmp_path / images_name, np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / labels_name, np.zeros((0,), np.uint8))
    if from_env:
        env_dir(tmp_path)
    prefix = r"JAXGUIDE_DATA_DIR='.*': " if from_env else "^"
    with pytest.raises(DataError, match=prefix + rf"MNIST data dir {tmp_path}: the {split} split "
                                                 r"holds 0 images .*accepted at least 1"):
        data.load_mnist(split, None if from_env else tmp_path)
