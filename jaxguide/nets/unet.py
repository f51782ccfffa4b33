"""The project's default denoiser: a small UNet that trains well on a 2-core CPU.

The image is folded 2×2 into channels (space-to-depth: 28×28×1 → 14×14×4), so every layer
runs at 14×14 or 7×7: no convolution at full resolution, plain 3×3 convs (fast in XLA on
CPU, unlike depthwise ones), GroupNorm (no batch statistics), and a Fourier time embedding
that shifts every residual block. It predicts the noise ε.

The input checks every network runs when traced (`check_images`, `check_times`) live here.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxguide.checks import check_array, check_int, check_ints, invalid, is_concrete
from jaxguide.checks import check_times as check_time_values
from jaxguide.nets.conv import Conv


def check_images(x, *, channels: int | None, multiple: int = 1,
                 size: tuple[int, int] | None = None, fitted: bool = False) -> int:
    """Checks a network's input images when traced (and finite when concrete); returns the
    batch size B.

    x: a floating (B, H, W, C) array of images scaled to [-1, 1], with C = `channels` (None:
    any), H and W positive multiples of `multiple` or, given `size`, (H, W) = size.
    `fitted`: C was read from the variables (`fitted_channels`), which the message says.
    """
    hw = "H, W" if size is None else "%d, %d" % size
    accepted = f"(B, {hw}, {channels or 'C'}) with B >= 1"
    accepted += f" and H and W positive multiples of {multiple}" if multiple > 1 else ""
    if fitted and channels:
        accepted += f" (C = {channels}: what the variables were made for)"
    check_array("x", x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise invalid("x", f"dtype {x.dtype}", "a floating array scaled to [-1, 1]")
    b, h, w, c = tuple(x.shape) if len(x.shape) == 4 else (0,) * 4
    if (0 in (b, h, w) or h % multiple or w % multiple or c != (channels or c)
            or (h, w) != (size or (h, w))):
        raise invalid("x", f"shape {tuple(x.shape)}", accepted)
    if (is_concrete(x) and getattr(x, "is_fully_addressable", True)  # Not a multi-host array.
            and not np.all(np.isfinite(np.asarray(x)))):
        raise ValueError("x: contains NaN or inf, accepted finite images")
    return b


def check_times(t, batch: int) -> jax.Array:
    """Checks a network's times t, a number or a real () or (batch,) array, when traced (and
    finite and >= 0 when concrete); returns them as float32 (batch,)."""
    check_time_values(t)
    if jnp.shape(t) not in ((), (batch,)):
        raise invalid("t", f"shape {jnp.shape(t)} for a batch of {batch} images",
                      f"() or ({batch},)")
    return jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))


def check_class_labels(y, batch: int, num_classes: int | None) -> jax.Array | None:
    """A network's labels y: None (for a conditional network of K = num_classes classes, the
    null class K for every image), or a conditional network's integers (batch,) in 0..K,
    checked when concrete; returns int32 (batch,), or None for an unconditional network."""
    if y is None:
        return None if num_classes is None else jnp.full((batch,), num_classes, jnp.int32)
    if num_classes is None:
        raise invalid("y", "class labels for an unconditional network", "None (num_classes=None)")
    accepted = f"integer labels of shape ({batch},) in 0..{num_classes} ({num_classes}: null class)"
    if (getattr(y, "shape", None) != (batch,)
            or not jnp.issubdtype(getattr(y, "dtype", object), jnp.integer)):
        raise invalid("y", repr(getattr(y, "shape", y)), accepted)
    if is_concrete(y) and not np.all((np.asarray(y) >= 0) & (np.asarray(y) <= num_classes)):
        raise invalid("y", f"labels outside 0..{num_classes}", accepted)
    return jnp.asarray(y, jnp.int32)


def check_widths(channels, emb_dim: int, groups: int) -> tuple[int, ...]:
    """Checks a network's widths `channels` (returned as a tuple), its time embedding's
    emb_dim (even, >= 2: sines and cosines, half each) and GroupNorm `groups` (dividing every
    width)."""
    channels = check_ints("channels", channels, 1)
    if check_int("emb_dim", emb_dim, 2) % 2:
        raise invalid("emb_dim", str(emb_dim), "an even integer >= 2")
    if any(c % check_int("groups", groups, 1) for c in channels):
        raise invalid("groups", repr(groups), f"a divisor of every width in channels={channels}")
    return channels


def fitted_channels(module: nn.Module, conv: str, fold: int = 1) -> int | None:
    """The image channels fixed by the parameters of `module`'s first convolution `conv`
    (which sees `fold` channels per image channel), or None while initializing."""
    kernel = module.variables.get("params", {}).get(conv, {}).get("kernel")
    return None if kernel is None else kernel.shape[-2] // fold


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) → (B, H/p, W/p, p·p·C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, p·p·C) → (B, H·p, W·p, C); the inverse of `space_to_depth`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c // (p * p))


def upsample_nearest(x: jax.Array, p: int) -> jax.Array:
    """(B, H, W, C) → (B, H·p, W·p, C), each pixel repeated p×p times: the values of
    `jax.image.resize(..., "nearest")`, as a broadcast (its gradient a sum, not a scatter)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, p, w, p, c))
    return x.reshape(b, h * p, w * p, c)


def fourier_features(t: jax.Array, dim: int, max_period: float = 1e4) -> jax.Array:
    """Sinusoidal features of times t (B,) in [0, 1] → (B, dim); dim even."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
    angles = 1000.0 * t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEmbedding(nn.Module):
    """t (B,) → (B, dim): Fourier features followed by a 2-layer MLP."""

    dim: int

    @nn.compact
    def __call__(self, t):
        h = fourier_features(t, self.dim)
        h = nn.Dense(self.dim)(h)
        return nn.Dense(self.dim)(nn.silu(h))


class ResBlock(nn.Module):
    """x (B, H, W, C_in), emb (B, E) → (B, H, W, features). GN → SiLU → conv, twice."""

    features: int
    groups: int = 8

    @nn.compact
    def __call__(self, x, emb):
        h = Conv(self.features, (3, 3))(nn.silu(nn.GroupNorm(self.groups)(x)))
        h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        h = Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1))(x)
        return x + h


class SelfAttention(nn.Module):
    """x (B, H, W, C) → x + attention over the H·W positions (GroupNorm first, `heads` heads)."""

    heads: int = 4
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        q, k, v = jnp.split(nn.Dense(3 * c)(nn.GroupNorm(self.groups)(x)), 3, axis=-1)
        split = lambda a: a.reshape(b, h * w, self.heads, c // self.heads)
        out = nn.dot_product_attention(split(q), split(k), split(v)).reshape(b, h, w, c)
        return x + nn.Dense(c, kernel_init=nn.initializers.zeros)(out)


class UNet(nn.Module):
    """Noise predictor ε̂(x, t[, y]): x (B, H, W, C), t (B,) or scalar → (B, H, W, C).

    With `num_classes` = K it is also class-conditional: y (B,) in 0..K, where K is the null
    class ∅ (and y=None means ∅ for every image), so one network gives both ε̂(x, t, y) and
    the unconditional ε̂(x, t, ∅) (classifier-free guidance; trained with label dropout).

    H and W are multiples of patch · 2^(len(channels) - 1) (4 with the defaults).

    Attributes:
      channels: width at each resolution, starting at (H/patch, W/patch).
      blocks: residual blocks per resolution on the way down (one more on the way up).
      emb_dim: width of the time embedding, even.
      patch: space-to-depth factor.
      groups: GroupNorm groups; divides every width in `channels`.
      num_classes: K for a class-conditional network (a learned class embedding, K + 1 rows
        with the null class, added to the time embedding), None for an unconditional one.
      attention: self-attention after every residual block of the lowest resolution (7×7
        with the defaults: every position sees the whole digit); its width must divide
        into `heads` heads.
    """

    channels: tuple[int, ...] = (64, 128)
    blocks: int = 2
    emb_dim: int = 128
    patch: int = 2
    groups: int = 8
    attention: bool = False
    heads: int = 4
    num_classes: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "channels", check_widths(self.channels, self.emb_dim,
                                                          self.groups))
        check_int("blocks", self.blocks, 0)
        check_int("patch", self.patch, 1)
        if check_int("heads", self.heads, 1) and self.channels[-1] % self.heads:
            raise invalid("heads", repr(self.heads),
                          f"a divisor of the lowest resolution's width {self.channels[-1]}")
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, 2)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False):
        del train  # No dropout or batch statistics.
        batch = check_images(x, channels=fitted_channels(self, "Conv_0", self.patch**2),
                             fitted=True, multiple=self.patch * 2 ** (len(self.channels) - 1))
        t, y = check_times(t, batch), check_class_labels(y, batch, self.num_classes)
        out_channels = x.shape[-1]
        emb = TimeEmbedding(self.emb_dim)(t)
        if y is not None:
            emb = emb + nn.Embed(self.num_classes + 1, self.emb_dim)(y)
        h = Conv(self.channels[0], (3, 3))(space_to_depth(x, self.patch))
        lowest = len(self.channels) - 1

        def block(h, ch, level):
            h = ResBlock(ch, self.groups)(h, emb)
            if self.attention and level == lowest:
                h = SelfAttention(self.heads, self.groups)(h)
            return h

        skips = [h]
        for level, ch in enumerate(self.channels):
            if level > 0:
                h = Conv(ch, (3, 3), strides=(2, 2))(h)
                skips.append(h)
            for _ in range(self.blocks):
                h = block(h, ch, level)
                skips.append(h)
        h = block(h, self.channels[-1], lowest)
        for level, ch in reversed(list(enumerate(self.channels))):
            for _ in range(self.blocks + 1):
                h = block(jnp.concatenate([h, skips.pop()], -1), ch, level)
            if level > 0:
                h = upsample_nearest(h, 2)
                h = Conv(self.channels[level - 1], (3, 3))(h)
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        h = Conv(out_channels * self.patch**2, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return depth_to_space(h, self.patch)
