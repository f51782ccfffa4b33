"""Convolutions for CPU: depthwise convs as shifted multiply-adds, dense convs as one GEMM
(im2col). Same parameters and, up to float32 rounding, same outputs and gradients as
`lax.conv_general_dilated`, which stays the choice on GPU and TPU.

XLA's CPU backend runs depthwise convolutions 20–80× slower than their arithmetic needs; as
kh·kw shifted products they become elementwise ops it runs well (their kernel gradient, a
reduction over the batch, stays XLA's, which is fast). 1×1 convolutions are dots: with
XLA's convolutions between the depthwise ones, XLA:CPU transposes the activations back and
forth (SeedUNet trains 1.5× faster with dots). Convolutions of one input channel (every
MNIST net's first layer) are im2col GEMMs too: XLA ran the classifier's first-layer input
gradient at 4 GFLOP/s (the guidance gradient: 1.9× faster). Other dense ones stay XLA's:
compiled with `jaxguide.compiler.COMPILER_OPTIONS` they run at 100–150 GFLOP/s on 2 cores,
3–5× the im2col GEMM form, whose patches cost memory bandwidth; stride-1 ones get
`dense_conv`'s input gradient (the guidance gradient: 1.45× faster guided sampling). "gemm"
keeps the GEMM form selectable for comparison (benchmarks/throughput.py).

Networks of narrow layers can also run on batch-minor activations (C, H, W, B) with
`batch_minor_conv` (SeedUNet does from 32 images on: `prefers_batch_minor`).

    Conv(features, (3, 3))          # nn.Conv that uses conv_general_dilated below
    with conv_impl("xla"): ...      # trace with XLA's convolution everywhere (benchmarks)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxguide.checks import check_choice

NHWC = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "xla", "gemm")
_IMPL = contextvars.ContextVar("jaxguide_conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(name: str):
    """Chooses the convolutions of networks traced inside (jit a new function inside: one
    traced before keeps its own):

    * "auto" (default): on CPU, `depthwise_conv` for depthwise convolutions, a dot for 1×1
      ones, `gemm_conv` for those of one input channel, `dense_conv` for other stride-1
      ones, XLA's convolution for the rest; XLA's convolution on GPU and TPU;
    * "xla": XLA's convolution everywhere;
    * "gemm": `gemm_conv` (im2col GEMMs, `depthwise_conv`) everywhere.
    Convolutions `gemm_conv` does not cover (dilations, other groupings) always use XLA's.
    """
    token = _IMPL.set(check_choice("conv_impl", name, IMPLS))
    try:
        yield
    finally:
        _IMPL.reset(token)


def _taps(x, kernel_shape, strides, padding):
    """The kh·kw shifted, strided views of x (B, H, W, C) or (C, H, W, B) padded by padding
    ((top, bottom), (left, right)), each (B, H_out, W_out, C) or (C, H_out, W_out, B)."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    kh, kw = kernel_shape
    sh, sw = strides
    h_out, w_out = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return [x[:, i:i + sh * (h_out - 1) + 1:sh, j:j + sw * (w_out - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def _patches(x, kernel_shape, strides, padding, channel_axis):
    """The taps stacked on the channel axis, ordered (i, j, c) like an HWIO kernel reshaped
    to (kh·kw·C, O): (B, H_out, W_out, kh·kw·C) or (kh·kw·C, H_out, W_out, B)."""
    taps = _taps(x, kernel_shape, strides, padding)
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=channel_axis)


def _shifted_adds(x, kernel, strides, padding, batch_minor=False):
    kh, kw, _, c = kernel.shape
    taps = _taps(x, (kh, kw), strides, padding)
    w = kernel.reshape(kh * kw, c)
    if batch_minor:  # Channels lead: per-channel weights broadcast over (H, W, B).
        w = w[:, :, None, None, None]
    out = taps[0] * w[0]
    for k in range(1, kh * kw):
        out = out + taps[k] * w[k]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, strides, padding):
    """Depthwise 2-D convolution: x (B, H, W, C), kernel (kh, kw, 1, C) → (B, H_out, W_out, C).

    A sum of kh·kw shifted products; the input gradient is the same form, the kernel
    gradient XLA's. strides (sh, sw) and padding ((top, bottom), (left, right)) are tuples.
    """
    return _shifted_adds(x, kernel, strides, padding)


def _depthwise_fwd(x, kernel, strides, padding):
    return _shifted_adds(x, kernel, strides, padding), (x, kernel)


def _depthwise_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    _, vjp_x = jax.vjp(lambda x: _shifted_adds(x, kernel, strides, padding), x)
    _, vjp_kernel = jax.vjp(lambda k: lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=NHWC, feature_group_count=x.shape[-1]), kernel)
    return vjp_x(dy)[0], vjp_kernel(dy)[0]


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _xla_conv(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_conv(x, kernel, padding):
    """XLA's stride-1 convolution, x (B, H, W, C) × kernel (kh, kw, C, O) → (B, H', W', O),
    whose input gradient is XLA's convolution of dy with the flipped kernel laid out HWIO.

    Autodiff's input gradient convolves with the kernel's in/out axes swapped, a layout that
    XLA:CPU ran at 3–7 GFLOP/s in the guided sampler's loop. padding ((top, bottom),
    (left, right)), each in [0, k - 1].
    """
    return _xla_conv(x, kernel, padding)


def _dense_fwd(x, kernel, padding):
    return _xla_conv(x, kernel, padding), (x, kernel)


def _dense_bwd(padding, residuals, dy):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = _xla_conv(dy, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    _, vjp_kernel = jax.vjp(lambda k: _xla_conv(x, k, padding), kernel)
    return dx, vjp_kernel(dy)[0]


dense_conv.defvjp(_dense_fwd, _dense_bwd)


def gemm_conv(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), feature_group_count=1):
    """2-D convolution, NHWC × HWIO → NHWC, as slices + concatenate + one dot (im2col).

    x (B, H, W, C), kernel (kh, kw, C / groups, O). Depthwise (groups = C = O) goes to
    `depthwise_conv`; other grouped convolutions are not supported.
    """
    strides = tuple(strides)
    padding = tuple(tuple(p) for p in padding)
    kh, kw, c_in, c_out = kernel.shape
    if c_in == 1 and feature_group_count == c_out == x.shape[-1] > 1:
        return depthwise_conv(x, kernel, strides, padding)
    if feature_group_count != 1:
        raise NotImplementedError(f"gemm_conv: {feature_group_count} groups of {c_in} channels")
    return _patches(x, (kh, kw), strides, padding, -1) @ kernel.reshape(kh * kw * c_in, c_out)


BATCH_MINOR_MIN = 32
"""The smallest batch that `prefers_batch_minor` runs batch-minor (measured: SeedUNet's
forward is 0.65× as fast batch-minor at 16 images, 1.46× at 32)."""


def prefers_batch_minor(batch: int) -> bool:
    """Whether a network that supports both layouts should run a batch of `batch` images on
    batch-minor (C, H, W, B) activations: when JAX's default backend is the CPU, under
    conv_impl "auto", from BATCH_MINOR_MIN images on.

    Networks of narrow layers (SeedUNet: 7–56 channels) otherwise spend their time in
    elementwise loops over a short innermost channel axis, which XLA:CPU vectorises poorly
    (SiLU: 1.2 ns per value on 4–28 channels, 0.5 ns on 32–64). With the batch innermost
    every per-channel weight broadcasts over a whole (H, W, B) plane and a 1×1 convolution
    is one (O, C) × (C, H·W·B) product without transposes (SeedUNet's forward at batch 80:
    1.7× faster; `benchmarks/throughput.py --sections layout`).
    """
    return _IMPL.get() == "auto" and jax.default_backend() == "cpu" and batch >= BATCH_MINOR_MIN


def batch_minor_conv(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), feature_group_count=1):
    """2-D convolution on batch-minor activations: x (C, H, W, B) × kernel (kh, kw,
    C / groups, O) (HWIO, nn.Conv's) → (O, H_out, W_out, B), dense or depthwise.

    Depthwise (groups = C = O): kh·kw shifted products; dense: one (O, kh·kw·C) ×
    (kh·kw·C, H_out, W_out, B) contraction of stacked taps (the batch axis stays its own, so
    a batch sharded over devices stays sharded). Gradients are autodiff's; `conv_impl` does
    not apply (these are never XLA's convolutions). strides (sh, sw), padding ((top,
    bottom), (left, right)).
    """
    strides = tuple(strides)
    padding = tuple(tuple(p) for p in padding)
    kh, kw, c_in, c_out = kernel.shape
    c, groups = c_in * feature_group_count, feature_group_count
    if x.ndim != 4 or x.shape[0] != c:
        raise ValueError(f"batch_minor_conv: x of shape {x.shape} for a kernel {kernel.shape} in "
                         f"{groups} groups; accepted x (C, H, W, B) with C = {c}")
    if c_in == 1 and groups == c_out > 1:
        return _shifted_adds(x, kernel, strides, padding, batch_minor=True)
    if groups != 1:
        raise NotImplementedError(f"batch_minor_conv: {groups} groups of {c_in} channels")
    patches = _patches(x, (kh, kw), strides, padding, 0)
    return jnp.einsum("ko,khwb->ohwb", kernel.reshape(kh * kw * c_in, c_out), patches)


def _supported(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
    grouped_ok = feature_group_count == 1 or (rhs.shape[2] == 1 and
                                              feature_group_count == rhs.shape[3] == lhs.shape[3])
    return (lhs.ndim == 4 and plain and grouped_ok
            and dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """`lax.conv_general_dilated`, or `gemm_conv` / `depthwise_conv` / `dense_conv` where
    `conv_impl` says so (2-D NHWC/HWIO convolutions without dilation, dense or depthwise)."""
    impl = _IMPL.get()
    if impl != "xla" and not kwargs and _supported(lhs, rhs, lhs_dilation, rhs_dilation,
                                                   dimension_numbers, feature_group_count):
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
        padding = tuple(tuple(p) for p in padding)
        pointwise = rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0))
        stride_1 = tuple(window_strides) == (1, 1)
        cpu = jax.default_backend() == "cpu"
        single_input = rhs.shape[2] == 1 and feature_group_count == 1
        if impl == "gemm" or (cpu and (feature_group_count > 1 or single_input
                                         or (pointwise and stride_1))):
            return gemm_conv(lhs, rhs, window_strides, padding, feature_group_count)
        if cpu and stride_1 and all(0 <= p <= k - 1 for pad, k in zip(padding, rhs.shape[:2])
                                    for p in pad):
            return dense_conv(lhs, rhs, padding)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
