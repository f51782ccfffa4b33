"""Bad TrainConfig fields, network hyperparameters, network inputs and data dirs get an
early error naming the argument and what is accepted; good numpy scalars, dicts and scalar
times are accepted."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import raising_cases
from jaxguide import data
from jaxguide.configs import TrainConfig, get_config
from jaxguide.nets import Evaluator, NoisyClassifier, SeedUNet, UNet, make_model
from jaxguide.nets.conv import batch_minor_conv
from jaxguide.nets.seed_unet import shuffle_concat
from jaxguide.nets.unet import check_times

TINY = {
    "unet": UNet(channels=(8, 16), blocks=1, emb_dim=16, groups=4),
    "seed": SeedUNet(base_dim=4, dim_mults=(1, 2), time_embedding_dim=8, timesteps=10),
    "classifier": NoisyClassifier(time_embed="fourier"),
    "evaluator": Evaluator(),
}
X = jnp.zeros((2, 28, 28, 1))


@functools.cache
def variables(name: str):
    """The shapes of TINY[name]'s variables: inputs are checked when traced, so the bad-input
    cases trace with `jax.eval_shape` and compute nothing."""
    return jax.eval_shape(TINY[name].init, jax.random.key(0), X[:1], jnp.zeros(1))


def apply(name: str, x=X, t=jnp.zeros(2)):
    return jax.eval_shape(lambda v: TINY[name].apply(v, x, t), variables(name))


def config(**changes):
    return TrainConfig(**changes)


CASES = {
    # id: (call, exception type, regex the message must match)
    # --- TrainConfig
    "lr-string": (lambda: config(lr="0.1"), TypeError, r"lr: got '0\.1', accepted a number in \[1\.2e-38, 1\)"),
    "lr-none": (lambda: config(lr=None), TypeError, r"lr: got None, accepted a number"),
    "beta_min-negative": (lambda: config(beta_min=-1), ValueError,
                          r"beta_min: got -1, accepted a finite number > 0"),
    "beta_min-nan": (lambda: config(beta_min=math.nan), ValueError, r"beta_min: got nan"),
    "beta_max-below-min": (lambda: config(beta_max=0.001), ValueError,
                           r"beta_max: got 0\.001, accepted a finite number >= beta_min=0\.01"),
    "schedule-too-large": (lambda: config(beta_max=1e5), ValueError,
                           r"integral of beta over \[0, T\] must be <= 10000, got 50000"),
    "grad_clip-negative": (lambda: config(grad_clip=-1), ValueError,
                           r"grad_clip: got -1, accepted a number in \[1\.2e-38, 3\.4e38\] \(float32\), or None"),
    "grad_clip-nan": (lambda: config(grad_clip=math.nan), ValueError, r"grad_clip: got nan"),
    "weight_decay-nan": (lambda: config(weight_decay=math.nan), ValueError,
                         r"weight_decay: got nan, accepted a finite number >= 0"),
    "weight_decay-negative": (lambda: config(weight_decay=-5), ValueError, r"weight_decay: got -5"),
    "warmup_frac-1": (lambda: config(warmup_frac=1), ValueError, r"warmup_frac: got 1, accepted"),
    "ema_decay-1": (lambda: config(ema_decay=1.0), ValueError,
                    r"ema_decay: got 1\.0, accepted a number in \(0, 1\), or None"),
    "seed-2**64": (lambda: config(seed=2**64), ValueError,
                   r"seed: got 18446744073709551616, accepted an integer >= 0 and <= 4294967295"),
    "seed-string": (lambda: config(seed="1"), TypeError, r"seed: got '1'"),
    "steps-2**40": (lambda: config(steps=2**40), ValueError,
                    r"steps: got 1099511627776, accepted an integer >= 1 and <= 2147483647"),
    "steps-bool": (lambda: config(steps=True), TypeError, r"steps: got True"),
    "batch_size-float": (lambda: config(batch_size=8.0), ValueError, r"batch_size: got 8\.0"),
    "keep-0": (lambda: config(keep=0), ValueError, r"keep: got 0, accepted an integer >= 1"),
    "T-negative": (lambda: config(T=-1), ValueError, r"^T: got -1, accepted a finite number > 0"),
    "t_min-T": (lambda: config(t_min=1.0), ValueError, r"t_min: got 1\.0, accepted a number in \[0, T=1\.0\)"),
    "model_kwargs-string": (lambda: config(model_kwargs="abc"), TypeError,
                            r"model_kwargs: got 'abc', accepted a dict"),
    "model_kwargs-bad-dict": (lambda: config(model_kwargs={"channels": []}), ValueError,
                              r"model_kwargs for 'unet': channels: got \[\]"),
    # --- make_model and the networks' hyperparameters
    "make_model-list-name": (lambda: make_model(["unet"]), TypeError, r"model: got \['unet'\], accepted"),
    "make_model-kwargs-list": (lambda: make_model("unet", [("blocks", 1)]), TypeError,
                               r"model_kwargs: got \[\('blocks', 1\)\], accepted a dict"),
    "make_model-unknown-kwarg": (lambda: make_model("unet", {"colour": 3}), ValueError,
                                 r"model_kwargs for 'unet': got unknown 'colour', accepted channels"),
    "unet-channels-empty": (lambda: make_model("unet", {"channels": []}), ValueError,
                            r"model_kwargs for 'unet': channels: got \[\], accepted a non-empty "
                            r"sequence of integers >= 1"),
    "unet-channels-int": (lambda: UNet(channels=64), TypeError, r"channels: got 64"),
    "unet-groups": (lambda: make_model("unet", {"groups": 3}), ValueError,
                    r"groups: got 3, accepted a divisor of every width in channels=\(64, 128\)"),
    "unet-blocks": (lambda: UNet(blocks=-1), ValueError, r"blocks: got -1, accepted an integer >= 0"),
    "unet-emb_dim": (lambda: UNet(emb_dim=1), ValueError, r"emb_dim: got 1, accepted an integer >= 2"),
    "unet-emb_dim-odd": (lambda: UNet(emb_dim=9), ValueError,  # Its features were 8 wide.
                         r"emb_dim: got 9, accepted an even integer >= 2"),
    "unet-patch": (lambda: UNet(patch=0), ValueError, r"patch: got 0"),
    "classifier-num_classes": (lambda: make_model("classifier", {"num_classes": 0}), ValueError,
                               r"model_kwargs for 'tutorial': num_classes: got 0, accepted an "
                               r"integer >= 2"),
    "classifier-time_embed": (lambda: NoisyClassifier(time_embed="sin"), ValueError,
                              r"time_embed: got 'sin', accepted add, fourier"),
    "classifier-width": (lambda: NoisyClassifier(width=0), ValueError, r"width: got 0"),
    "classifier-dropout": (lambda: NoisyClassifier(dropout=1.0), ValueError,
                           r"dropout: got 1\.0, accepted a number in \[0, 1\)"),
    "evaluator-num_classes": (lambda: Evaluator(num_classes=1), ValueError, r"num_classes: got 1"),
    "seed-base_dim": (lambda: SeedUNet(base_dim=7), ValueError,
                      r"base_dim: got 7, accepted an even integer >= 4"),
    "seed-dim_mults": (lambda: SeedUNet(base_dim=6, dim_mults=(1,)), ValueError,
                       r"dim_mults: got \(1,\) for base_dim=6"),
    "seed-temp": (lambda: SeedUNet(temp=math.nan), ValueError, r"temp: got nan"),
    "seed-layout": (lambda: SeedUNet(layout="NCHW"), ValueError,
                    r"layout: got 'NCHW', accepted auto, NHWC, CHWB"),
    "seed-layout-type": (lambda: SeedUNet(layout=3), TypeError, r"layout: got 3, accepted auto"),
    "shuffle-axis": (lambda: shuffle_concat(jnp.zeros((2, 3)), jnp.zeros((2, 3)), axis=2),
                     ValueError, r"axis: got 2, accepted -2\.\.1"),
    "batch-minor-conv-channels": (lambda: batch_minor_conv(jnp.zeros((3, 4, 4, 2)),
                                                           jnp.zeros((3, 3, 4, 5))),
                                  ValueError, r"batch_minor_conv: x of shape \(3, 4, 4, 2\) .* "
                                  r"accepted x \(C, H, W, B\) with C = 4"),
    # --- network inputs
    **{f"{name}-{case}": (functools.partial(apply, name, **inputs), exc, pattern)
       for name in ("unet", "seed", "classifier")
       for case, (inputs, exc, pattern) in {
           "x-rank-3": ({"x": jnp.zeros((2, 28, 28))}, ValueError,
                        r"x: got shape \(2, 28, 28\), accepted \(B, "),
           "x-3-channels": ({"x": jnp.zeros((2, 28, 28, 3))}, ValueError,
                            r"x: got shape \(2, 28, 28, 3\), accepted \(B, .*, 1\)"),
           "x-uint8": ({"x": jnp.zeros((2, 28, 28, 1), jnp.uint8)}, ValueError,
                       r"x: got dtype uint8, accepted a floating array scaled to \[-1, 1\]"),
           "x-list": ({"x": [[0.0]]}, TypeError, r"x: got a list, accepted an array"),
           "t-batch-3": ({"t": jnp.zeros(3)}, ValueError,
                         r"t: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
           "t-string": ({"t": "0.5"}, TypeError, r"t: got '0\.5', accepted a real number"),
       }.items()},
    "unet-x-27x27": (lambda: apply("unet", x=jnp.zeros((2, 27, 27, 1))), ValueError,
                     r"x: got shape \(2, 27, 27, 1\), accepted \(B, H, W, 1\) with B >= 1 and "
                     r"H and W positive multiples of 4"),
    "seed-x-26x26": (lambda: apply("seed", x=jnp.zeros((2, 26, 26, 1))), ValueError,
                     r"x: got shape \(2, 26, 26, 1\), .*multiples of 4"),
    "classifier-x-32x32": (lambda: apply("classifier", x=jnp.zeros((2, 32, 32, 1))), ValueError,
                           r"x: got shape \(2, 32, 32, 1\), accepted \(B, 28, 28, 1\)"),
    "evaluator-x-uint8": (lambda: apply("evaluator", x=X.astype(jnp.uint8)), ValueError,
                          r"x: got dtype uint8"),
    "evaluator-features-3-channels": (
        lambda: jax.eval_shape(functools.partial(Evaluator().apply, method=Evaluator.features),
                               variables("evaluator"), jnp.zeros((2, 28, 28, 3))),
        ValueError, r"x: got shape \(2, 28, 28, 3\)"),
    # --- data
    "load_mnist-data_dir-int": (lambda: data.load_mnist("train", 123), TypeError,
                                r"data_dir: got 123, accepted a path"),
    "load_mnist-tfds_data_dir-int": (lambda: data.load_mnist("train", tfds_data_dir=1.5),
                                     TypeError, r"tfds_data_dir: got 1\.5, accepted a path"),
    "load_mnist-data_dir-empty": (lambda: data.load_mnist("train", ""), ValueError,
                                  r"data_dir: got '', accepted a non-empty path"),
}


test_bad_input = raising_cases(CASES)


def test_numpy_scalars_and_dict_kwargs_are_accepted():
    cfg = get_config("denoiser", preset="tiny")
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.model_kwargs}
    same = cfg.replace(steps=np.int64(cfg.steps), lr=np.float32(0.5), seed=np.uint32(2**32 - 1),
                       model_kwargs=kwargs)
    assert (same.steps, same.seed) == (cfg.steps, 2**32 - 1)
    assert type(same.steps) is int and type(same.lr) is float and same.lr == 0.5
    assert same.model_kwargs == cfg.model_kwargs  # Sorted pairs, lists as tuples.
    assert TrainConfig.from_dict(same.to_dict()) == same
    hash(same)


def test_list_kwargs_give_a_hashable_equal_model():
    """Checkpoint metadata holds lists (JSON): the model must still hash for jit."""
    model = make_model("unet", {"channels": [8, 16], "groups": 4})
    assert model == UNet(channels=(8, 16), groups=4) and hash(model) is not None
    assert make_model("seed", {"dim_mults": [2, 4]}) == SeedUNet()


@pytest.mark.parametrize("name", ["unet", "seed", "classifier"])
@pytest.mark.parametrize("t", [0.3, np.float32(0.3), jnp.float32(0.3), jnp.full(2, 0.3)])
def test_t_scalar_or_batch(name, t):
    assert apply(name, t=t).shape[0] == 2


def test_check_times_broadcasts():
    np.testing.assert_array_equal(check_times(0.3, 2), jnp.full(2, 0.3, jnp.float32))
    np.testing.assert_array_equal(check_times(jnp.arange(2), 2), jnp.array([0.0, 1.0]))
