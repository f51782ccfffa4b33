"""Convolutions for CPU: depthwise convs as shifted multiply-adds, dense convs as one GEMM
(im2col). Same parameters and, up to float32 rounding, same outputs and gradients as
`lax.conv_general_dilated`, which stays the choice on GPU and TPU.

XLA's CPU backend runs depthwise convolutions, and the kernel gradient of convolutions with
few input channels, far slower than their arithmetic needs; as shifted products, slices and
dots they become elementwise ops and GEMMs that it runs well. Measured on 2 CPU cores
(benchmarks/throughput.py, training images/s): SeedUNet 3.4×, the noisy classifier 1.1×,
the default UNet (3×3 convs on 64+ channels) unchanged.

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

NHWC = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "xla", "gemm")
_IMPL = contextvars.ContextVar("jaxguide_conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(name: str):
    """Chooses the convolutions of networks traced inside (jit a new function inside: one
    traced before keeps its own):

    * "auto" (default): `gemm_conv` on CPU, XLA's convolution on GPU and TPU;
    * "xla": XLA's convolution everywhere;
    * "gemm": `gemm_conv` everywhere.
    Convolutions `gemm_conv` does not cover (dilations, other groupings) always use XLA's.
    """
    if name not in IMPLS:
        raise ValueError(f"conv_impl: got {name!r}, accepted {', '.join(IMPLS)}")
    token = _IMPL.set(name)
    try:
        yield
    finally:
        _IMPL.reset(token)


def _taps(x, kernel_shape, strides):
    """The kh·kw shifted, strided views of padded x (B, H, W, C), each (B, H_out, W_out, C)."""
    kh, kw = kernel_shape
    sh, sw = strides
    h_out, w_out = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return [x[:, i:i + sh * (h_out - 1) + 1:sh, j:j + sw * (w_out - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def gemm_conv(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), feature_group_count=1):
    """2-D convolution, NHWC × HWIO → NHWC, as slices + concatenate + one dot (im2col).

    x (B, H, W, C), kernel (kh, kw, C / groups, O). Depthwise (groups = C = O) is a sum of
    kh·kw shifted products instead; other grouped convolutions are not supported.
    """
    kh, kw, c_in, c_out = kernel.shape
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    taps = _taps(x, (kh, kw), strides)
    if feature_group_count == 1:
        if kh == kw == 1:
            return taps[0] @ kernel[0, 0]
        return jnp.concatenate(taps, axis=-1) @ kernel.reshape(kh * kw * c_in, c_out)
    if c_in == 1 and feature_group_count == c_out == x.shape[-1]:
        w = kernel.reshape(kh * kw, c_out)
        out = taps[0] * w[0]
        for k in range(1, kh * kw):
            out = out + taps[k] * w[k]
        return out
    raise NotImplementedError(f"gemm_conv: {feature_group_count} groups of {c_in} channels")


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
    """`lax.conv_general_dilated`, or `gemm_conv` where `conv_impl` says so (2-D NHWC/HWIO
    convolutions without dilation, dense or depthwise)."""
    impl = _IMPL.get()
    wanted = impl == "gemm" or (impl == "auto" and jax.default_backend() == "cpu")
    if wanted and not kwargs and _supported(lhs, rhs, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count):
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
        return gemm_conv(lhs, rhs, window_strides, padding, feature_group_count)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
