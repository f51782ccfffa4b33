"""The project's default denoiser: a small UNet that trains well on a 2-core CPU.

The image is folded 2×2 into channels (space-to-depth: 28×28×1 → 14×14×4), so every layer
runs at 14×14 or 7×7: no convolution at full resolution, plain 3×3 convs (fast in XLA on
CPU, unlike depthwise ones), GroupNorm (no batch statistics), and a Fourier time embedding
that shifts every residual block. It predicts the noise ε.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxguide.checks import check_int, invalid
from jaxguide.nets.conv import Conv
from jaxguide.nets.inputs import (check_class_labels, check_images, check_times, check_widths,
                                  fitted_channels)


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
