"""Flax port of the PyTorch tutorial's MNIST noise-prediction UNet (ShuffleNet-style units).

Inputs and outputs are NHWC; inside, activations are NHWC or, on CPU for batches of 32 and
more, batch-minor (C, H, W, B) (`SeedUNet.layout`; same parameters). Submodule names mirror
the PyTorch `state_dict` names with `.<i>` written as `_<i>`
(`encoder_blocks.0.conv0.1.branch2.3.module.0.weight` is
`encoder_blocks_0/conv0_1/branch2_3/module_0/kernel`), so `load_torch_state_dict` can map
the tutorial's weights one to one.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxguide.checks import check_choice, check_int, check_ints, check_number, invalid
from jaxguide.nets.conv import (NHWC, batch_minor_conv, conv_general_dilated,
                                 prefers_batch_minor)
from jaxguide.nets.inputs import check_images, check_times


def _channel_axis(batch_minor: bool) -> int:
    return 0 if batch_minor else -1


class _Conv(nn.Module):
    """nn.Conv's parameters (kernel (kh, kw, C / groups, features), bias (features,)) applied
    to NHWC activations (like nn.Conv, through `conv.conv_general_dilated`) or batch-minor
    (C, H, W, B) ones (`conv.batch_minor_conv`)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    feature_group_count: int = 1
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[_channel_axis(self.batch_minor)]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, c // self.feature_group_count, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)  # As nn.Conv does.
        strides = (self.strides, self.strides)
        if self.batch_minor:
            y = batch_minor_conv(x, kernel, strides, self.padding, self.feature_group_count)
            return y + bias[:, None, None, None]
        y = conv_general_dilated(x, kernel, strides, self.padding, dimension_numbers=NHWC,
                                 feature_group_count=self.feature_group_count)
        return y + bias


def _batch_norm(name: str, train: bool, batch_minor: bool) -> nn.BatchNorm:
    """BatchNorm2d with PyTorch's defaults (momentum 0.1, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, axis=_channel_axis(batch_minor),
                        momentum=0.9, epsilon=1e-5, name=name)


def _depthwise(x: jax.Array, stride: int, train: bool, batch_minor: bool, conv_name: str,
               bn_name: str) -> jax.Array:
    """3x3 depthwise conv (PyTorch padding=1) -> BatchNorm, no activation.

    (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), C), or batch-minor (C, H, W, B)
    -> (C, ceil(H / stride), ceil(W / stride), B). Padding is explicit: for stride 2 'SAME'
    would pad (0, 1) instead of PyTorch's (1, 1) and shift the sampling grid.
    """
    c = x.shape[_channel_axis(batch_minor)]
    x = _Conv(c, (3, 3), stride, ((1, 1), (1, 1)), feature_group_count=c,
              batch_minor=batch_minor, name=conv_name)(x)
    return _batch_norm(bn_name, train, batch_minor)(x)


def shuffle_concat(a: jax.Array, b: jax.Array, axis: int = -1) -> jax.Array:
    """PyTorch's channel shuffle (2 groups) of the concatenation [a, b] on the channel axis:
    C channels twice -> 2C with channel 2j = a_j and 2j + 1 = b_j.

    Written as an interleave (stack + reshape): XLA:CPU runs it 10 % faster (SeedUNet
    forward) than a concatenation followed by the shuffle's transpose.
    """
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis: got {axis}, accepted -{a.ndim}..{a.ndim - 1}")
    axis %= a.ndim
    shape = list(a.shape)
    shape[axis] *= 2
    return jnp.stack([a, b], axis=axis + 1).reshape(shape)


def upsample2x(x: jax.Array) -> jax.Array:
    """Bilinear x2 upsampling of axes 1 and 2 (half-pixel centres, edge-clamped), equal to
    PyTorch's Upsample(scale_factor=2, mode="bilinear", align_corners=False).

    (B, H, W, C) -> (B, 2H, 2W, C), or (C, H, W, B) -> (C, 2H, 2W, B).
    """
    n, h, w, m = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, m), method="bilinear")


class ConvBnSiLU(nn.Module):
    """Conv (with bias, stride 1, padding k // 2) -> BatchNorm -> SiLU.

    (B, H, W, C_in) -> (B, H, W, features), or batch-minor (C_in, H, W, B) ->
    (features, H, W, B).
    """

    features: int
    kernel_size: int = 1
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p = self.kernel_size // 2
        x = _Conv(self.features, (self.kernel_size, self.kernel_size), padding=((p, p), (p, p)),
                  batch_minor=self.batch_minor, name="module_0")(x)
        return nn.silu(_batch_norm("module_1", train, self.batch_minor)(x))


class ResidualBottleneck(nn.Module):
    """Stride-1 shuffle unit: split channels in halves a, b; branch1(a) and branch2(b);
    concatenate and shuffle. No identity path.

    (B, H, W, C_in) -> (B, H, W, out_channels), or the batch-minor (C, H, W, B) likewise;
    C_in and out_channels even.
    """

    out_channels: int
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bm, axis = self.batch_minor, _channel_axis(self.batch_minor)
        a, b = jnp.split(x, 2, axis=axis)
        a = _depthwise(a, 1, train, bm, "branch1_0", "branch1_1")
        a = ConvBnSiLU(self.out_channels // 2, batch_minor=bm, name="branch1_2")(a, train)
        b = ConvBnSiLU(b.shape[axis], batch_minor=bm, name="branch2_0")(b, train)
        b = _depthwise(b, 1, train, bm, "branch2_1", "branch2_2")
        b = ConvBnSiLU(self.out_channels // 2, batch_minor=bm, name="branch2_3")(b, train)
        return shuffle_concat(a, b, axis)


class ResidualDownsample(nn.Module):
    """Stride-2 shuffle unit: both branches see the whole input; concatenate and shuffle.

    (B, H, W, C_in) -> (B, ceil(H / 2), ceil(W / 2), out_channels), or the batch-minor
    (C, H, W, B) likewise; out_channels even.
    """

    out_channels: int
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bm = self.batch_minor
        a = _depthwise(x, 2, train, bm, "branch1_0", "branch1_1")
        a = ConvBnSiLU(self.out_channels // 2, batch_minor=bm, name="branch1_2")(a, train)
        b = ConvBnSiLU(self.out_channels // 2, batch_minor=bm, name="branch2_0")(x, train)
        b = _depthwise(b, 2, train, bm, "branch2_1", "branch2_2")
        b = ConvBnSiLU(self.out_channels // 2, batch_minor=bm, name="branch2_3")(b, train)
        return shuffle_concat(a, b, _channel_axis(bm))


def _stack(x: jax.Array, out_channels: int, n: int, name: str, train: bool,
           batch_minor: bool) -> jax.Array:
    """n x ResidualBottleneck(C, C), then ResidualBottleneck(C, out_channels); named
    name_0 .. name_n like the PyTorch nn.Sequential."""
    c = x.shape[_channel_axis(batch_minor)]
    for i in range(n):
        x = ResidualBottleneck(c, batch_minor=batch_minor, name=f"{name}_{i}")(x, train)
    return ResidualBottleneck(out_channels, batch_minor=batch_minor, name=f"{name}_{n}")(x, train)


class TimeMLP(nn.Module):
    """SiLU(x + MLP(t_emb)) with MLP = Dense(hidden) -> SiLU -> Dense(out).

    x (B, H, W, out_dim) or batch-minor (out_dim, H, W, B), t_emb (B, E) -> like x.
    """

    hidden_dim: int
    out_dim: int
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
        h = nn.silu(nn.Dense(self.hidden_dim, name="mlp_0")(t_emb))
        h = nn.Dense(self.out_dim, name="mlp_2")(h)
        return nn.silu(x + (h.T if self.batch_minor else h)[:, None, None, :])


class EncoderBlock(nn.Module):
    """skip = conv0(x); out = conv1(time_mlp(skip, t_emb)).

    x (B, H, W, C_in), t_emb (B, E) -> out (B, H/2, W/2, out_channels),
    skip (B, H, W, out_channels / 2); batch-minor x, out and skip are (C, H, W, B). The skip
    is taken before the time MLP.
    """

    out_channels: int
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        bm, c = self.batch_minor, self.out_channels
        skip = _stack(x, c // 2, 3, "conv0", train, bm)
        h = TimeMLP(c, c // 2, batch_minor=bm, name="time_mlp")(skip, t_emb)
        return ResidualDownsample(c, batch_minor=bm, name="conv1")(h, train), skip


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate [x, skip] (C_in channels), conv0, time_mlp, conv1.

    x (B, H, W, C_x), skip (B, 2H, 2W, C_in - C_x), t_emb (B, E)
    -> (B, 2H, 2W, out_channels / 2); batch-minor x, skip and output are (C, H, W, B).
    """

    out_channels: int
    batch_minor: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, t_emb: jax.Array, train: bool) -> jax.Array:
        bm, axis = self.batch_minor, _channel_axis(self.batch_minor)
        x = jnp.concatenate([upsample2x(x), skip], axis=axis)
        c_in = x.shape[axis]
        x = _stack(x, c_in // 2, 3, "conv0", train, bm)
        x = TimeMLP(c_in, c_in // 2, batch_minor=bm, name="time_mlp")(x, t_emb)
        return ResidualBottleneck(self.out_channels // 2, batch_minor=bm, name="conv1")(x, train)


LAYOUTS = ("auto", "NHWC", "CHWB")


class SeedUNet(nn.Module):
    """The tutorial's noise-prediction UNet (248k parameters with the defaults).

    x (B, H, W, in_channels) float32 with H and W multiples of 2^len(dim_mults) (4 with the
    defaults), t (B,) or scalar in [0, 1] -> eps_hat (B, H, W, out_channels). BatchNorm
    uses its running statistics unless train=True, in which case apply with
    mutable=["batch_stats"].

    `layout` is the activations' layout inside the network, not the input's or output's:
    "NHWC", "CHWB" (batch-minor: channels first, the batch innermost) or "auto" (default:
    `conv.prefers_batch_minor(B)`, i.e. "CHWB" on CPU for B >= 32). Both layouts have the
    same parameters and give the same outputs and gradients up to float32 rounding.
    """

    base_dim: int = 28
    in_channels: int = 1
    out_channels: int = 1
    time_embedding_dim: int = 256
    timesteps: int = 100
    dim_mults: tuple[int, ...] = (2, 4)
    temp: float = 100.0
    layout: str = "auto"

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "time_embedding_dim", "timesteps"):
            check_int(name, getattr(self, name), 1)
        check_number("base_dim", self.base_dim, "an even integer >= 4",
                     lambda v: v >= 4 and v % 2 == 0, integer=True)
        object.__setattr__(self, "dim_mults", check_ints("dim_mults", self.dim_mults, 1))
        if any(self.base_dim * m % 4 for m in self.dim_mults):  # Shuffle units halve even widths.
            raise invalid("dim_mults", f"{self.dim_mults} for base_dim={self.base_dim}",
                          "multipliers m with base_dim * m a multiple of 4")
        check_number("temp", self.temp, "a finite number > 0", lambda v: 0 < v < math.inf)
        if not isinstance(self.layout, str):
            raise invalid("layout", repr(self.layout), ", ".join(LAYOUTS), TypeError)
        check_choice("layout", self.layout, LAYOUTS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        batch = check_images(x, channels=self.in_channels, multiple=2 ** len(self.dim_mults))
        t = check_times(t, batch)
        centers = (jnp.arange(self.timesteps, dtype=jnp.float32) + 0.5) / self.timesteps
        weights = nn.softmax(-self.temp * jnp.abs(t[:, None] - centers), axis=-1)
        t_emb = nn.Dense(self.time_embedding_dim, name="time_embedding")(weights)

        bm = self.layout == "CHWB" or (self.layout == "auto" and prefers_batch_minor(batch))
        if bm:
            x = x.transpose(3, 1, 2, 0)
        dims = [self.base_dim] + [self.base_dim * m for m in self.dim_mults]
        x = ConvBnSiLU(self.base_dim, kernel_size=3, batch_minor=bm, name="init_conv")(x, train)
        skips = []
        for i, c_out in enumerate(dims[1:]):
            x, skip = EncoderBlock(c_out, batch_minor=bm, name=f"encoder_blocks_{i}")(
                x, t_emb, train)
            skips.append(skip)
        x = _stack(x, dims[-1] // 2, 2, "mid_block", train, bm)
        for i, c_out in enumerate(reversed(dims[:-1])):
            x = DecoderBlock(c_out, batch_minor=bm, name=f"decoder_blocks_{i}")(
                x, skips.pop(), t_emb, train)
        x = _Conv(self.out_channels, (1, 1), batch_minor=bm, name="final_conv")(x)
        return x.transpose(3, 1, 2, 0) if bm else x


# Flax leaf name -> PyTorch leaf name, per variable collection.
_TORCH_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_name(path: tuple[str, ...]) -> str:
    """('params', 'encoder_blocks_0', 'conv0_1', 'branch1_0', 'kernel')
    -> 'encoder_blocks.0.conv0.1.branch1.0.weight'."""
    collection, *modules, leaf = path
    modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join(modules + [_TORCH_LEAF[collection, leaf]])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Flax HWIO conv / (in, out) dense shape -> PyTorch OIHW / (out, in) shape."""
    if len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    return tuple(reversed(shape))


def _from_torch(array: np.ndarray) -> np.ndarray:
    """PyTorch OIHW conv / (out, in) linear weight -> Flax HWIO / (in, out)."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    return array.T


def _preview(names: list[str], n: int = 5) -> str:
    more = f", ... ({len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


@functools.cache
def _expected_variables() -> dict:
    """Flattened abstract variables of SeedUNet(): {(collection, ..., leaf): ShapeDtypeStruct}."""
    model = SeedUNet()
    abstract = jax.eval_shape(
        model.init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, 28, 28, model.in_channels), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32))
    return traverse_util.flatten_dict(abstract)


def load_torch_state_dict(arrays: Mapping[str, np.ndarray]) -> dict:
    """Converts the tutorial's PyTorch `state_dict` (name -> numpy array, e.g.
    `dict(np.load(path))`) into `{"params": ..., "batch_stats": ...}` for `SeedUNet()`.

    `num_batches_tracked` entries are ignored and `centers`, if present, must equal
    (k + 0.5) / 100. Raises ValueError naming every missing, unexpected or mis-shaped entry.
    """
    if not isinstance(arrays, Mapping) or not all(isinstance(k, str) for k in arrays):
        raise invalid("arrays", type(arrays).__name__,
                      "a dict of name -> array (a PyTorch state_dict as numpy arrays)", TypeError)
    flat, missing, bad_shapes, known = {}, [], [], {"centers"}
    for path, leaf in _expected_variables().items():
        name = _torch_name(path)
        if name.endswith(".running_mean"):
            known.add(name.removesuffix("running_mean") + "num_batches_tracked")
        if name not in arrays:
            missing.append(name)
            continue
        known.add(name)
        raw = np.asarray(arrays[name])
        if raw.dtype.kind not in "iuf":
            raise invalid(name, f"dtype {raw.dtype}", "real numbers")
        with np.errstate(over="ignore"):
            value = raw.astype(np.float32)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: contains NaN or inf (in float32), accepted finite values")
        if name.endswith(".running_var") and value.min() < 0:
            raise invalid(name, f"a negative variance {value.min():g}", ">= 0")
        want = _torch_shape(leaf.shape)
        if value.shape != want:
            bad_shapes.append(f"{name}: got {value.shape}, expected {want}")
            continue
        flat[path] = jnp.asarray(_from_torch(value))

    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(sorted(missing))}")
    unexpected = sorted(set(arrays) - known)
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if bad_shapes:
        problems.append(f"shape mismatches ({len(bad_shapes)}): {_preview(bad_shapes)}")
    if "centers" in arrays:
        timesteps = SeedUNet().timesteps
        centers = (np.arange(timesteps) + 0.5) / timesteps
        got = np.asarray(arrays["centers"])
        if got.shape != centers.shape or not np.allclose(got, centers, atol=1e-6):
            problems.append(f"centers: expected (k + 0.5) / {timesteps} for k < {timesteps}, "
                            f"got an array of shape {got.shape} with other values")
    if problems:
        raise ValueError("state dict does not match SeedUNet(): " + "; ".join(problems))
    return traverse_util.unflatten_dict(flat)
