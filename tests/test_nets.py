"""The networks' behaviour: the UNet's self-attention, the ResNet noisy classifier, model names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguide.configs import TrainConfig
from jaxguide.nets import NoisyClassifier, ResNetClassifier, UNet, make_model
from jaxguide.nets.unet import SelfAttention


def _random_params(module, *args):
    """module's variables with every leaf drawn from N(0, 0.1²) (zero-initialised
    projections included), so that no branch is the identity by construction."""
    variables = module.init(jax.random.key(0), *args)
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return tree.unflatten([0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


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
