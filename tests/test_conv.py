"""The CPU convolutions (jaxguide.nets.conv) against XLA's: outputs and both gradients agree
to float32 rounding, and the networks keep the same parameters whichever is used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxguide.nets import make_model
from jaxguide.nets import SeedUNet
from jaxguide.nets.conv import (BATCH_MINOR_MIN, batch_minor_conv, conv_general_dilated, conv_impl,
                                 gemm_conv, prefers_batch_minor)

CASES = [  # (batch, size, c_in, c_out, kernel, stride, groups, padding)
    (3, 14, 8, 16, 3, 1, 1, "SAME"),
    (3, 14, 8, 16, 3, 2, 1, "SAME"),
    (3, 13, 4, 6, 3, 2, 1, ((1, 1), (1, 1))),
    (3, 12, 3, 5, 5, 1, 1, "VALID"),
    (3, 9, 6, 4, 1, 1, 1, "SAME"),
    (3, 14, 6, 6, 3, 1, 6, ((1, 1), (1, 1))),   # depthwise, as in SeedUNet
    (3, 14, 6, 6, 3, 2, 6, ((1, 1), (1, 1))),   # depthwise, stride 2
    (3, 7, 6, 6, 3, 2, 6, ((1, 1), (1, 1))),    # odd size
    (3, 12, 1, 5, 5, 1, 1, "VALID"),             # one input channel: the classifier's first
    (3, 14, 1, 7, 3, 1, 1, "SAME"),              # and SeedUNet's first layer
]


def conv_and_grads(conv, x, w, stride, padding, groups):
    strides = stride if isinstance(stride, tuple) else (stride, stride)

    def loss(x, w):
        dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        y = conv(x, w, strides, padding, dimension_numbers=dn, feature_group_count=groups)
        return jnp.sum(jnp.sin(y)), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
    return y, grads


def _batch_minor(x, w, strides, padding, groups):
    """batch_minor_conv on (C, H, W, B), seen from NHWC."""
    y = batch_minor_conv(x.transpose(3, 1, 2, 0), w, strides, padding, groups)
    return y.transpose(3, 1, 2, 0)


@pytest.mark.parametrize("conv", [gemm_conv, _batch_minor], ids=["gemm", "batch_minor"])
@pytest.mark.parametrize("case", CASES, ids=[f"k{c[4]}s{c[5]}g{c[6]}" for c in CASES])
def test_cpu_convs_match_xla(case, conv):
    b, n, c_in, c_out, k, stride, groups, padding = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, n, n, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, c_in // groups, c_out)), jnp.float32)

    def ours(x, w, strides, padding, dimension_numbers, feature_group_count):
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
        return conv(x, w, strides, padding, feature_group_count)

    y_ref, g_ref = conv_and_grads(lax.conv_general_dilated, x, w, stride, padding, groups)
    y, g = conv_and_grads(ours, x, w, stride, padding, groups)
    assert y.shape == y_ref.shape
    for a, e in zip((y, *g), (y_ref, *g_ref)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))


@pytest.mark.parametrize("conv", [gemm_conv, _batch_minor], ids=["gemm", "batch_minor"])
@pytest.mark.parametrize("groups", [1, 6])
def test_cpu_convs_match_xla_on_non_square_images(conv, groups):
    """H != W, a non-square kernel, unequal strides and asymmetric padding: no axis mix-up."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 12, 9, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 6 // groups, 6)), jnp.float32)
    padding, strides = ((0, 1), (1, 2)), (2, 1)
    ours = lambda x, w, strides, padding, dimension_numbers, feature_group_count: conv(
        x, w, strides, padding, feature_group_count)
    y_ref, g_ref = conv_and_grads(lax.conv_general_dilated, x, w, strides, padding, groups)
    y, g = conv_and_grads(ours, x, w, strides, padding, groups)
    assert y.shape == y_ref.shape == (2, 6, 11, 6)
    for a, e in zip((y, *g), (y_ref, *g_ref)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))


def test_batch_minor_is_preferred_on_cpu_from_32_images():
    assert jax.default_backend() == "cpu"
    assert not prefers_batch_minor(BATCH_MINOR_MIN - 1) and prefers_batch_minor(BATCH_MINOR_MIN)
    for impl in ("xla", "gemm"):
        with conv_impl(impl):
            assert not prefers_batch_minor(256)


SMALL_SEED = dict(base_dim=4, dim_mults=(1, 2), time_embedding_dim=8, timesteps=10)


def _random_like(tree, seed):
    """Random values of the shapes of `tree`: vectors (biases, scales, statistics) in
    [0.5, 1.5), weights of either sign with variance 1 / fan-in (activations of order 1)."""
    rng = np.random.default_rng(seed)

    def draw(a):
        if len(a.shape) < 2:
            return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32)
        bound = np.sqrt(3 / np.prod(a.shape[:-1]))
        return jnp.asarray(rng.uniform(-bound, bound, a.shape), jnp.float32)

    return jax.tree.map(draw, tree)


def _train_grads(module, variables, *args):
    """Training-mode loss, updated batch statistics and gradients (params, first arg)."""
    def loss(params, x):
        y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                  x, *args[1:], train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), updates

    (value, updates), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        variables["params"], args[0])
    return value, updates, grads


def _assert_trees_close(got, ref):
    """Equal to float32 rounding, relative to each tree's largest entry (the biases before a
    BatchNorm have gradients that are 0 up to rounding)."""
    scale = max(float(jnp.abs(e).max()) for e in jax.tree.leaves(ref))
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * scale)


def _chwb(x):
    return x.transpose(3, 1, 2, 0)


def test_seed_unet_layouts_agree():
    """SeedUNet on NHWC and batch-minor activations: same parameters, same outputs."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
    t = jnp.asarray([0.05, 0.5, 0.9])
    nhwc, chwb = SeedUNet(**SMALL_SEED, layout="NHWC"), SeedUNet(**SMALL_SEED, layout="CHWB")
    shapes = [jax.eval_shape(m.init, jax.random.key(0), x, t) for m in (nhwc, chwb)]
    assert shapes[0] == shapes[1]
    variables = _random_like(shapes[0], 5)
    out = [jax.jit(m.apply)(variables, x, t) for m in (nhwc, chwb)]
    assert np.isfinite(out[0]).all() and float(jnp.abs(out[0]).max()) > 1e-3
    _assert_trees_close(out[1], out[0])


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_seed_unet_takes_bfloat16_in_both_layouts(impl):
    """Like nn.Conv, SeedUNet's convolutions promote their input and parameters."""
    x, t = jnp.zeros((2, 8, 8, 1), jnp.bfloat16), jnp.zeros(2)
    for layout in ("NHWC", "CHWB"):
        model = SeedUNet(**SMALL_SEED, layout=layout)
        with conv_impl(impl):
            variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
            out = jax.eval_shape(model.apply, variables, x, t)
        assert out.shape == x.shape and out.dtype == jnp.float32


@pytest.mark.parametrize("unit", ["bottleneck", "downsample"])
def test_seed_unet_units_train_alike_in_both_layouts(unit):
    """Loss, batch statistics and gradients of SeedUNet's shuffle units in training mode."""
    from jaxguide.nets.seed_unet import ResidualBottleneck, ResidualDownsample

    cls = ResidualBottleneck if unit == "bottleneck" else ResidualDownsample
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 6, 6, 8)), jnp.float32)
    nhwc, chwb = cls(6, batch_minor=False), cls(6, batch_minor=True)
    variables = _random_like(jax.eval_shape(lambda x: nhwc.init(jax.random.key(0), x, True), x), 7)
    value, updates, (g_params, g_x) = _train_grads(nhwc, variables, x)
    value_m, updates_m, (g_params_m, g_x_m) = _train_grads(chwb, variables, _chwb(x))
    _assert_trees_close((value_m, updates_m, g_params_m, _chwb(g_x_m)),
                        (value, updates, g_params, g_x))


@pytest.mark.slow
def test_seed_unet_trains_alike_in_both_layouts():
    """The whole network's training loss, batch statistics and gradients (params and x)."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32)
    t = jnp.asarray([0.05, 0.5, 0.9])
    nhwc, chwb = SeedUNet(**SMALL_SEED, layout="NHWC"), SeedUNet(**SMALL_SEED, layout="CHWB")
    variables = _random_like(jax.eval_shape(nhwc.init, jax.random.key(0), x, t), 9)
    ref, got = (_train_grads(m, variables, x, t) for m in (nhwc, chwb))
    _assert_trees_close(got, ref)


def test_seed_unet_auto_layout_is_chosen_by_batch():
    model = SeedUNet(**SMALL_SEED)
    x = jnp.zeros((BATCH_MINOR_MIN, 4, 4, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x[:1], jnp.zeros(1))

    def first_activation_shape(batch):
        _, state = jax.eval_shape(lambda v: model.apply(
            v, x[:batch], jnp.zeros(batch), capture_intermediates=True, mutable=["intermediates"]),
            variables)
        return state["intermediates"]["init_conv"]["__call__"][0].shape

    assert first_activation_shape(1) == (1, 4, 4, 4)                           # NHWC
    assert first_activation_shape(BATCH_MINOR_MIN) == (4, 4, 4, BATCH_MINOR_MIN)  # CHWB
    with conv_impl("xla"):
        assert first_activation_shape(BATCH_MINOR_MIN) == (BATCH_MINOR_MIN, 4, 4, 4)


def test_unsupported_convolutions_fall_back_to_xla():
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4))  # 2 groups of 2 channels
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    with conv_impl("gemm"):
        y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
        y_dil = conv_general_dilated(x, w[..., :2, :].repeat(2, 2), (1, 1), "SAME",
                                     rhs_dilation=(2, 2), dimension_numbers=dn)
    assert y.shape == (1, 8, 8, 4) and y_dil.shape == (1, 8, 8, 4)
    with pytest.raises(ValueError, match="conv_impl: got 'fast', accepted auto, xla, gemm"):
        with conv_impl("fast"):
            pass


@pytest.mark.parametrize("name", ["seed", "unet", "classifier"])
def test_networks_have_the_same_parameters(name):
    model = make_model(name)
    x, t = jnp.zeros((1, 28, 28, 1)), jnp.zeros(1)
    shapes = {}
    for impl in ("xla", "auto", "gemm"):
        with conv_impl(impl):
            shapes[impl] = jax.eval_shape(model.init, jax.random.key(0), x, t)
    assert shapes["auto"] == shapes["xla"] and shapes["gemm"] == shapes["xla"]


def test_seed_unet_same_outputs_with_shifted_depthwise_convs():
    """SeedUNet is the network with depthwise convs: "auto" changes them on CPU."""
    model = make_model("seed")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 28, 28, 1)), jnp.float32)
    t = jnp.asarray([0.1, 0.7])
    # Random variables of the right shapes: jit(model.init) compiles for half a minute here.
    variables = _random_like(jax.eval_shape(model.init, jax.random.key(0), x, t), 1)
    outs = {}
    for impl in ("xla", "auto"):
        with conv_impl(impl):
            outs[impl] = jax.jit(model.apply)(variables, x, t)
    assert np.isfinite(outs["xla"]).all()
    np.testing.assert_allclose(outs["auto"], outs["xla"], rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(outs["xla"]).max()))


def test_jaxguide_jit_keeps_dots_and_convolutions_with_xla():
    """jaxguide.compiler.jit compiles without YNNPACK fusions on CPU; a plain jax.jit of the
    same function uses them (if this jaxlib stops doing so, the option can go)."""
    from jaxguide.compiler import jit

    if jax.default_backend() != "cpu":
        pytest.skip("a CPU compiler option")
    x, w = jnp.ones((16, 14, 14, 32)), jnp.ones((3, 3, 32, 32))  # Big enough for YNNPACK.
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    plain = jax.jit(conv).lower(x, w).compile().as_text()
    ours = jit(conv).lower(x, w).compile().as_text()
    assert "ynn_fusion" in plain
    assert "ynn_fusion" not in ours
    np.testing.assert_allclose(jit(conv)(x, w), jax.jit(conv)(x, w), rtol=1e-6)


def test_jaxguide_jit_nests_inside_other_transformations():
    """JAX takes compiler options only on top-level jits: inside the caller's jit, scan,
    vmap or grad, jaxguide.compiler.jit is a plain jit (and gives the same values)."""
    from jaxguide.compiler import jit

    f = jit(lambda x, n: jnp.sin(x) * n, static_argnames="n")
    x = jnp.arange(3.0)
    want = np.sin(np.arange(3.0)) * 2
    np.testing.assert_allclose(f(x, n=2), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda x: f(x, n=2))(x), want, rtol=1e-6)
    np.testing.assert_allclose(jax.lax.scan(lambda c, _: (c, f(x, n=2)), 0, None, 2)[1][1], want,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda x: f(x, n=2))(x), want, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: f(x, n=2).sum())(x), 2 * np.cos(np.arange(3.0)),
                               rtol=1e-6)
    assert f.__name__ == "<lambda>" and callable(f.lower)


@pytest.mark.parametrize("shape", [(2, 24, 24, 4), (3, 9, 8, 5)])
def test_max_pool_2x2_equals_flax_max_pool(shape):
    import flax.linen as nn

    from jaxguide.nets.classifier import max_pool_2x2

    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)  # No ties.
    flax_pool = lambda x: nn.max_pool(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), flax_pool(x))
    grad = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x))))(x)
    np.testing.assert_array_equal(grad(max_pool_2x2), grad(flax_pool))


@pytest.mark.parametrize("shape,p", [((2, 7, 7, 64), 2), ((3, 4, 5, 3), 3)])
def test_upsample_nearest_equals_jax_image_resize(shape, p):
    from jaxguide.nets.unet import upsample_nearest

    b, h, w, c = shape
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    resize = lambda x: jax.image.resize(x, (b, h * p, w * p, c), "nearest")
    np.testing.assert_array_equal(upsample_nearest(x, p), resize(x))
    grad = lambda up: jax.grad(lambda x: jnp.sum(jnp.sin(up(x))))(x)
    np.testing.assert_allclose(grad(lambda x: upsample_nearest(x, p)), grad(resize),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,padding", [(5, ((0, 0), (0, 0))), (3, ((1, 1), (1, 1))),
                                       (3, ((0, 2), (2, 1)))])
def test_dense_conv_gradients_equal_xla(k, padding):
    """dense_conv: XLA's forward, its own input gradient (flipped HWIO kernel)."""
    from jaxguide.nets.conv import dense_conv

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((3, 12, 11, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 4, 6)), jnp.float32)
    ours = lambda x, w, strides, padding, dimension_numbers, feature_group_count: dense_conv(
        x, w, tuple(map(tuple, padding)))
    y_ref, g_ref = conv_and_grads(lax.conv_general_dilated, x, w, 1, padding, 1)
    y, g = conv_and_grads(ours, x, w, 1, padding, 1)
    for a, e in zip((y, *g), (y_ref, *g_ref)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))
