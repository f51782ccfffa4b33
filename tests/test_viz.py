"""viz: grids, GIFs and loss plots; bad inputs get an error naming the argument, never a
traceback from numpy or matplotlib, never a silently wrong image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import raising_cases
from jaxguide import viz

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
                            ValueError, r"images: got shape \(0, 28, 28, 1\), accepted \(N, H, W, C\)"),
    "save_grid-rank": (lambda: viz.save_grid(np.zeros((2, 28, 28)), [0, 1], _in("g.png"), 2),
                       ValueError, r"images: got shape \(2, 28, 28\), accepted \(N, H, W, C\)"),
    "save_grid-not-numbers": (lambda: viz.save_grid([["a"]], [0], _in("g.png"), 1),
                              TypeError, r"images: got list of dtype <U1, accepted a numeric array"),
    "tile-uint8": (lambda: viz.tile(np.zeros((2, 28, 28, 1), np.uint8), 2),  # Was all white.
                   TypeError, r"images: got ndarray of dtype uint8, accepted a numeric array "
                   r"\(N, H, W, C\) of floats in \[-1, 1\]"),
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
                      ValueError, r"images: got shape \(28, 28\), accepted \(\.\.\., H, W, C\), C = 1 or 3"),
    "save_gif-no-frames": (lambda: viz.save_gif(np.zeros((0, 2, 28, 28, 1)), _in("t.gif"), 2),
                           ValueError, r"frames: got shape \(0, 2, 28, 28, 1\), accepted \(F, N, H, W, C\)"),
    "save_gif-rank": (lambda: viz.save_gif(IMGS, _in("t.gif"), 2),
                      ValueError, r"frames: got shape \(2, 28, 28, 1\), accepted \(F, N, H, W, C\)"),
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

test_bad_argument = raising_cases(VIZ_CASES)


def test_viz_good_input_still_draws(tmp_path):
    imgs = np.linspace(-1, 1, 3 * 28 * 28).reshape(3, 28, 28, 1)
    assert viz.save_grid(imgs, [1, 1, 2], tmp_path / "g.png", ncol=2).is_file()
    assert viz.save_gif(np.stack([imgs, imgs]), tmp_path / "t.gif", ncol=2, hold=0).is_file()
    assert viz.tile(imgs, 2).shape == (2 * 30 + 2, 2 * 30 + 2)



def test_rgb_images_make_rgb_grids_and_gifs(tmp_path):
    rgb = -np.ones((4, 8, 8, 3), np.float32)
    rgb[..., 0] = 1.0  # Red.
    assert viz.tile(rgb, 2).shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    assert viz.tile(rgb, 2)[2, 2].tolist() == [255, 0, 0]
    viz.save_grid(rgb, np.array([0, 0, 1, 1]), tmp_path / "grid.png", ncol=2,
                  class_names=["airplane", "automobile"])
    assert Image.open(tmp_path / "grid.png").mode in ("RGB", "RGBA")
    viz.save_gif(np.stack([rgb, -rgb]), tmp_path / "t.gif", ncol=2)
    gif = Image.open(tmp_path / "t.gif").convert("RGB")
    assert gif.getpixel((4, 4)) == (255, 0, 0)  # The first frame, red at scale 2.
