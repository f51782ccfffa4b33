"""The networks' behaviour: the UNet's self-attention, the ResNet noisy classifier, model names."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import raising_cases
from jaxguide import checkpoint
from jaxguide.configs import TrainConfig
from jaxguide.nets import (Evaluator, NoisyClassifier, ResNetClassifier, SeedUNet, UNet, apply_fn,
                           make_model)
from jaxguide.nets.conv import batch_minor_conv
from jaxguide.nets.seed_unet import shuffle_concat
from jaxguide.nets.inputs import check_times
from jaxguide.nets.unet import SelfAttention

KEY = jax.random.key(0)


def _random_params(module, *args):
    """module's variables with every leaf drawn from N(0, 0.1²) (zero-initialised
    projections included), so that no branch is the identity by construction."""
    variables = module.init(jax.random.key(0), *args)
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype), variables)


def test_self_attention_is_equivariant_to_permuting_positions():
    attn = SelfAttention(heads=2, groups=2)
    x = jax.random.normal(jax.random.key(2), (2, 3, 3, 8))
    variables = _random_params(attn, x)
    perm = np.random.default_rng(0).permutation(9)
    permute = lambda a: a.reshape(2, 9, 8)[:, perm].reshape(2, 3, 3, 8)
    out = attn.apply(variables, x)
    np.testing.assert_allclose(attn.apply(variables, permute(x)), permute(out), atol=1e-5)
    assert float(jnp.abs(out - x).max()) > 1e-2  # Not the identity.


def test_self_attention_mixes_all_positions():
    """Every output position depends on every input position (one layer sees the whole image)."""
    attn = SelfAttention(heads=1, groups=1)
    x = jax.random.normal(jax.random.key(3), (1, 3, 3, 4))
    variables = _random_params(attn, x)
    jac = jax.jacobian(lambda x: attn.apply(variables, x)[0, 0, 0].sum())(x)
    assert np.all(np.abs(np.asarray(jac)).sum(-1) > 0)


def test_unet_with_attention_starts_as_the_unet_without_it():
    """The attention's output projection starts at zero: at init the attention blocks are the
    identity, so the two networks agree given the same convolution parameters."""
    x, t = jax.random.normal(jax.random.key(4), (2, 28, 28, 1)), jnp.array([0.3, 0.9])
    plain, attn = (UNet(channels=(8, 16), blocks=1, emb_dim=16, groups=4, attention=a)
                   for a in (False, True))
    v_plain = _random_params(plain, x, t)
    v_attn = attn.init(jax.random.key(0), x, t)
    params = dict(v_attn["params"])
    for name, value in v_plain["params"].items():
        params[name] = value  # Same names for the shared layers; attention blocks keep init.
    assert any(k.startswith("SelfAttention") for k in params)
    np.testing.assert_allclose(attn.apply({"params": params}, x, t), plain.apply(v_plain, x, t),
                               atol=1e-5)


def test_unet_heads_must_divide_the_lowest_width():
    with pytest.raises(ValueError, match=r"heads: got 3, accepted a divisor of the lowest "
                                         r"resolution's width 16"):
        UNet(channels=(8, 16), groups=4, attention=True, heads=3)


def test_resnet_classifier_gives_log_probabilities_that_depend_on_t():
    clf = ResNetClassifier(channels=(8, 16), blocks=1, emb_dim=16, groups=4)
    x = jax.random.normal(jax.random.key(5), (3, 28, 28, 1))
    variables = _random_params(clf, x, jnp.zeros(3))
    lp = clf.apply(variables, x, jnp.full(3, 0.1))
    assert lp.shape == (3, 10)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(lp, -1), 0.0, atol=1e-5)
    assert float(jnp.abs(lp - clf.apply(variables, x, jnp.full(3, 0.9))).max()) > 1e-5


def test_resnet_classifier_works_at_other_image_sizes():
    clf = ResNetClassifier(num_classes=4, channels=(8, 16), blocks=1, emb_dim=16, groups=4)
    x = jnp.zeros((2, 32, 32, 3))
    out = jax.eval_shape(lambda: clf.init_with_output(jax.random.key(0), x, jnp.zeros(2))[0])
    assert out.shape == (2, 4)


def test_the_tutorial_classifier_keeps_its_old_name():
    """Checkpoints of earlier versions call the tutorial's classifier "classifier"."""
    assert isinstance(make_model("classifier"), NoisyClassifier)
    assert TrainConfig(task="classifier", model="classifier").model == "tutorial"


# ------------------------------------------------------------------ bad arguments

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


test_bad_argument = raising_cases({
    "make_model-bogus": (lambda: make_model("bogus"),
                         ValueError, r"model: got 'bogus', accepted unet"),
    "unet-channels-empty": (lambda: make_model("unet", {"channels": []}), ValueError,
                            r"model_kwargs for 'unet': channels: got \[\], accepted a non-empty "
                            r"sequence of integers >= 1"),
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
    "seed-layout-type": (lambda: SeedUNet(layout=3), TypeError, r"layout: got 3, accepted auto"),
    "seed-layout": (lambda: SeedUNet(layout="NCHW"), ValueError,
                    r"layout: got 'NCHW', accepted auto, NHWC, CHWB"),
    "shuffle-axis": (lambda: shuffle_concat(jnp.zeros((2, 3)), jnp.zeros((2, 3)), axis=2),
                     ValueError, r"axis: got 2, accepted -2\.\.1"),
    "batch-minor-conv-channels": (lambda: batch_minor_conv(jnp.zeros((3, 4, 4, 2)),
                                                           jnp.zeros((3, 3, 4, 5))),
                                  ValueError, r"batch_minor_conv: x of shape \(3, 4, 4, 2\) .* "
                                  r"accepted x \(C, H, W, B\) with C = 4"),
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
    "classifier-empty-batch": (lambda: jax.eval_shape(NoisyClassifier().init, KEY,
                                                      jnp.zeros((0, 28, 28, 1)), jnp.zeros(0)),
                               ValueError, r"x: got shape \(0, 28, 28, 1\), accepted .*B >= 1"),
})


def test_list_kwargs_give_a_hashable_equal_model():
    """Checkpoint metadata holds lists (JSON): the model must still hash for jit."""
    model = make_model("unet", {"channels": [8, 16], "groups": 4})
    assert model == UNet(channels=(8, 16), groups=4)
    assert hash(model) == hash(UNet(channels=(8, 16), groups=4))
    assert make_model("seed", {"dim_mults": [2, 4]}) == SeedUNet()


@pytest.mark.parametrize("name", ["unet", "seed", "classifier"])
@pytest.mark.parametrize("t", [0.3, np.float32(0.3), jnp.float32(0.3), jnp.full(2, 0.3)])
def test_t_scalar_or_batch(name, t):
    assert apply(name, t=t).shape[0] == 2


def test_check_times_broadcasts():
    np.testing.assert_array_equal(check_times(0.3, 2), jnp.full(2, 0.3, jnp.float32))
    np.testing.assert_array_equal(check_times(jnp.arange(2), 2), jnp.array([0.0, 1.0]))


def test_apply_fn_names_bad_models_variables_and_inputs(tiny_checkpoints):
    den, den_vars, _ = checkpoint.load_model(tiny_checkpoints / "denoiser")
    _, cls_vars, _ = checkpoint.load_model(tiny_checkpoints / "classifier")
    x = jnp.zeros((2, 28, 28, 1))
    cases = [
        (lambda: apply_fn("unet", den_vars), TypeError, r"model: got str, accepted a Flax module"),
        (lambda: apply_fn(den, None), TypeError, r"variables: got None, accepted a dict of "
         r"collections"),
        (lambda: apply_fn(den, cls_vars)(x, 0.5), ValueError,
         r"variables: do not fit the UNet \(Could not find parameter"),
        (lambda: jax.jit(apply_fn(den, cls_vars))(x, 0.5), ValueError,
         r"variables: do not fit the UNet"),
        (lambda: apply_fn(den, den_vars)(x, jnp.full(2, jnp.nan)), ValueError,
         r"t: got nan, accepted a finite time >= 0"),
        (lambda: apply_fn(den, den_vars)(x, -1.0), ValueError, r"t: got -1\.0, accepted"),
        (lambda: apply_fn(den, den_vars)(x.at[0, 0, 0, 0].set(jnp.inf), 0.5), ValueError,
         r"x: contains NaN or inf, accepted finite images"),
        # All zeros came out of integer variables.
        (lambda: apply_fn(den, jax.tree.map(lambda a: a.astype(jnp.int32), den_vars)),
         ValueError, r"variables: got dtype int32 at \['params'\]\[.*accepted floating arrays"),
        # Finite in float64, inf in the network's float32: only NaN came out.
        (lambda: apply_fn(den, den_vars)(x, np.float64(1e300)), ValueError,
         r"t: got 1e\+300, accepted a finite time >= 0 \(in float32\)"),
        # The input is right, the variables are another network's: the message says so.
        (lambda: apply_fn(make_model("classifier"), den_vars)(x, 0.5), ValueError,
         r"x: got shape \(2, 28, 28, 1\), accepted \(B, 28, 28, 4\) with B >= 1 \(C = 4: what "
         r"the variables were made for\)"),
    ]
    for call, exc_type, pattern in cases:
        with pytest.raises(exc_type, match=pattern):
            call()
    assert jax.jit(apply_fn(den, den_vars))(x, 0.5).shape == x.shape  # Traced: not checked.
