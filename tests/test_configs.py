"""TrainConfig and its presets: every field is checked on construction, with an error that
names the field and what is accepted; NumPy scalars and dict kwargs are accepted."""

from __future__ import annotations

import math

import numpy as np

from conftest import raising_cases
from jaxguide.configs import TrainConfig, get_config
from jaxguide.nets import make_model


def config(**changes):
    return TrainConfig(**changes)


def test_numpy_scalars_and_dict_kwargs_are_accepted():
    cfg = get_config("denoiser", preset="tiny")
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.model_kwargs}
    same = cfg.replace(steps=np.int64(cfg.steps), lr=np.float32(0.5), seed=np.uint32(2**32 - 1),
                       model_kwargs=kwargs)
    assert (same.steps, same.seed) == (cfg.steps, 2**32 - 1)
    assert type(same.steps) is int and type(same.lr) is float and same.lr == 0.5
    assert same.model_kwargs == cfg.model_kwargs  # Sorted pairs, lists as tuples.
    assert TrainConfig.from_dict(same.to_dict()) == same
    assert hash(same) == hash(cfg.replace(lr=0.5, seed=2**32 - 1))


test_bad_argument = raising_cases({
    "dataset-unknown": (lambda: config(dataset="svhn"), ValueError,
                        r"dataset: got 'svhn'.*accepted mnist, fashion_mnist, cifar10"),
    "init_from-not-a-str": (lambda: config(init_from=3), TypeError,
                            r"init_from: got 3, accepted a model directory"),
    "init_from-blank": (lambda: config(init_from=" "), ValueError,
                        r"init_from: got ' ', accepted a model directory or None"),
    "TrainConfig-lr-zero-in-float32": (lambda: TrainConfig(lr=1e-320), ValueError,
                                       r"lr: got 1e-320, accepted a number in \[1\.2e-38, 1\)"),
    "get_config-task": (lambda: get_config("generator"),
                        ValueError, r"task: got 'generator', accepted denoiser, classifier"),
    "get_config-preset": (lambda: get_config("denoiser", preset="huge"),
                          ValueError, r"preset: got 'huge', accepted default, tiny"),
    "get_config-model": (lambda: get_config("denoiser", "resnet"),
                         ValueError, r"model: got 'resnet' for task 'denoiser', accepted unet, seed"),
    "TrainConfig-batch_size-0": (lambda: TrainConfig(batch_size=0),
                                 ValueError, r"batch_size: got 0, accepted an integer >= 1"),
    "TrainConfig-steps-float": (lambda: TrainConfig(steps=10.0),
                                ValueError, r"steps: got 10\.0, accepted an integer >= 1"),
    "lr-string": (lambda: config(lr="0.1"), TypeError, r"lr: got '0\.1', accepted a number in \[1\.2e-38, 1\)"),
    "beta_min-negative": (lambda: config(beta_min=-1), ValueError,
                          r"beta_min: got -1, accepted a finite number > 0"),
    "beta_max-below-min": (lambda: config(beta_max=0.001), ValueError,
                           r"beta_max: got 0\.001, accepted a finite number >= beta_min=0\.01"),
    "schedule-too-large": (lambda: config(beta_max=1e5), ValueError,
                           r"integral of beta over \[0, T\]: got 50000, accepted <= 10000"),
    "grad_clip-negative": (lambda: config(grad_clip=-1), ValueError,
                           r"grad_clip: got -1, accepted a number in \[1\.2e-38, 3\.4e38\] \(float32\), or None"),
    "weight_decay-nan": (lambda: config(weight_decay=math.nan), ValueError,
                         r"weight_decay: got nan, accepted a finite number >= 0"),
    "warmup_frac-1": (lambda: config(warmup_frac=1), ValueError, r"warmup_frac: got 1, accepted"),
    "ema_decay-1": (lambda: config(ema_decay=1.0), ValueError,
                    r"ema_decay: got 1\.0, accepted a number in \(0, 1\), or None"),
    "seed-2**64": (lambda: config(seed=2**64), ValueError,
                   r"seed: got 18446744073709551616, accepted an integer >= 0 and <= 4294967295"),
    "steps-2**40": (lambda: config(steps=2**40), ValueError,
                    r"steps: got 1099511627776, accepted an integer >= 1 and <= 2147483647"),
    "batch_size-float": (lambda: config(batch_size=8.0), ValueError, r"batch_size: got 8\.0"),
    "keep-0": (lambda: config(keep=0), ValueError, r"keep: got 0, accepted an integer >= 1"),
    "T-negative": (lambda: config(T=-1), ValueError, r"^T: got -1, accepted a finite number > 0"),
    "t_min-T": (lambda: config(t_min=1.0), ValueError, r"t_min: got 1\.0, accepted a number in \[0, T=1\.0\)"),
    "model_kwargs-string": (lambda: config(model_kwargs="abc"), TypeError,
                            r"model_kwargs: got 'abc', accepted a dict"),
    "model_kwargs-bad-dict": (lambda: config(model_kwargs={"channels": []}), ValueError,
                              r"model_kwargs for 'unet': channels: got \[\]"),
    "make_model-list-name": (lambda: make_model(["unet"]), TypeError, r"model: got \['unet'\], accepted"),
    "make_model-kwargs-list": (lambda: make_model("unet", [("blocks", 1)]), TypeError,
                               r"model_kwargs: got \[\('blocks', 1\)\], accepted a dict"),
    "make_model-unknown-kwarg": (lambda: make_model("unet", {"colour": 3}), ValueError,
                                 r"model_kwargs for 'unet': got unknown 'colour', accepted channels"),
})
