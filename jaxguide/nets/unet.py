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

from jaxguide.nets.conv import Conv


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


def fourier_features(t: jax.Array, dim: int, max_period: float = 1e4) -> jax.Array:
    """Sinusoidal features of times t (B,) in [0, 1] → (B, dim)."""
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


class UNet(nn.Module):
    """Noise predictor ε̂(x, t): x (B, 28, 28, C), t (B,) → (B, 28, 28, C).

    Attributes:
      channels: width at each resolution, starting at (H/patch, W/patch).
      blocks: residual blocks per resolution on the way down (one more on the way up).
      emb_dim: width of the time embedding.
      patch: space-to-depth factor.
    """

    channels: tuple[int, ...] = (64, 128)
    blocks: int = 2
    emb_dim: int = 128
    patch: int = 2
    groups: int = 8

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        del train  # No dropout or batch statistics.
        out_channels = x.shape[-1]
        emb = TimeEmbedding(self.emb_dim)(t)
        h = Conv(self.channels[0], (3, 3))(space_to_depth(x, self.patch))
        skips = [h]
        for level, ch in enumerate(self.channels):
            if level > 0:
                h = Conv(ch, (3, 3), strides=(2, 2))(h)
                skips.append(h)
            for _ in range(self.blocks):
                h = ResBlock(ch, self.groups)(h, emb)
                skips.append(h)
        h = ResBlock(self.channels[-1], self.groups)(h, emb)
        for level, ch in reversed(list(enumerate(self.channels))):
            for _ in range(self.blocks + 1):
                h = ResBlock(ch, self.groups)(jnp.concatenate([h, skips.pop()], -1), emb)
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = Conv(self.channels[level - 1], (3, 3))(h)
        h = nn.silu(nn.GroupNorm(self.groups)(h))
        h = Conv(out_channels * self.patch**2, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return depth_to_space(h, self.patch)
