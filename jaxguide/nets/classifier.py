"""Noise-conditioned classifiers q(y | x_t, t) and a clean-image evaluator CNN."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxguide.checks import check_choice, check_int, check_number
from jaxguide.data import DATASETS
from jaxguide.nets.conv import Conv
from jaxguide.nets.inputs import check_images, check_times, check_widths, fitted_channels
from jaxguide.nets.unet import TimeEmbedding, fourier_features, space_to_depth

# The tutorial's classifier flattens MNIST's features: its parameters fix the image size.
IMAGE_SIZE = DATASETS["mnist"].image_shape[:2]
NUM_CLASSES = DATASETS["mnist"].num_classes  # The default dataset's.
TIME_EMBEDDINGS = ("add", "fourier")


def check_head(num_classes, dropout) -> None:
    """Checks a classifier's class count (>= 2) and dropout rate ([0, 1))."""
    check_int("num_classes", num_classes, 2)
    check_number("dropout", dropout, "a number in [0, 1)", lambda v: 0 <= v < 1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID: (B, H, W, C) → (B, H // 2, W // 2, C).

    The values of `nn.max_pool(x, (2, 2), (2, 2))`, as a reshape and a max: its gradient is
    elementwise (split evenly between exact ties), where XLA:CPU's select-and-scatter made
    the classifier's input gradient 2.3× slower (measured at batch 256).
    """
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class NoisyClassifier(nn.Module):
    """The tutorial's classifier q(y | x_t, t): x (B, 28, 28, 1), t (B,) → log-probs (B, K).

    conv(1→c₁, k5) → max-pool → ReLU → conv(c₁→c₂, k5) → dropout2d → max-pool → ReLU →
    flatten(16·c₂) → ReLU(h + time) → fc(→hidden) → ReLU → dropout → fc(→K) → log_softmax.

    Attributes:
      time_embed: "add" adds t itself to every unit (the tutorial); "fourier" adds a learned
        projection of sinusoidal features of t, which lets the net reweight its features
        by noise level.
      width: channel multiplier (1 = the tutorial's 10 and 20 channels, 50 hidden units).
    """

    num_classes: int = NUM_CLASSES
    time_embed: str = "add"
    width: int = 1
    dropout: float = 0.5

    def __post_init__(self):
        check_head(self.num_classes, self.dropout)
        check_choice("time_embed", self.time_embed, TIME_EMBEDDINGS)
        check_int("width", self.width, 1)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        t = check_times(t, check_images(x, channels=fitted_channels(self, "Conv_0"), fitted=True,
                                        size=IMAGE_SIZE))
        c1, c2, hidden = 10 * self.width, 20 * self.width, 50 * self.width
        h = Conv(c1, (5, 5), padding="VALID")(x)
        h = nn.relu(max_pool_2x2(h))
        h = Conv(c2, (5, 5), padding="VALID")(h)
        h = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
        h = nn.relu(max_pool_2x2(h))
        h = h.reshape(h.shape[0], -1)
        if self.time_embed == "add":
            h = nn.relu(h + t[:, None])
        else:
            h = nn.relu(h + nn.Dense(h.shape[-1])(fourier_features(t, 64)))
        h = nn.relu(nn.Dense(hidden)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return jax.nn.log_softmax(nn.Dense(self.num_classes)(h))


class ModulatedBlock(nn.Module):
    """x (B, H, W, C_in), emb (B, E) → (B, H, W, features): a residual block whose two
    GroupNorms are scaled and shifted by the time embedding (guided-diffusion's AdaGN)."""

    features: int
    groups: int = 8
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, emb, train: bool):
        def norm(h):
            scale, shift = jnp.split(nn.Dense(2 * h.shape[-1])(nn.silu(emb)), 2, axis=-1)
            return nn.GroupNorm(self.groups)(h) * (1 + scale[:, None, None]) + shift[:, None, None]

        h = Conv(self.features, (3, 3))(nn.silu(norm(x)))
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(norm(h)))
        h = Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1))(x)
        return x + h


class ResNetClassifier(nn.Module):
    """A small ResNet q(y | x_t, t): x (B, H, W, C), t (B,) → log-probs (B, K).

    The image is folded 2×2 into channels (28×28 → 14×14), then `blocks` modulated residual
    blocks per width in `channels`, a stride-2 convolution between widths, GroupNorm, global
    average pooling and a linear head. The time embedding scales and shifts every block's
    normalisation, so every layer knows the noise level. H and W are multiples of
    2 · 2^(len(channels) − 1).
    """

    num_classes: int = NUM_CLASSES
    channels: tuple[int, ...] = (32, 64)
    blocks: int = 2
    emb_dim: int = 64
    groups: int = 8
    dropout: float = 0.1

    def __post_init__(self):
        check_head(self.num_classes, self.dropout)
        object.__setattr__(self, "channels", check_widths(self.channels, self.emb_dim,
                                                          self.groups))
        check_int("blocks", self.blocks, 1)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        t = check_times(t, check_images(x, channels=fitted_channels(self, "Conv_0", 4),
                                        fitted=True, multiple=2 ** len(self.channels)))
        emb = TimeEmbedding(self.emb_dim)(t)
        h = Conv(self.channels[0], (3, 3))(space_to_depth(x, 2))
        for level, ch in enumerate(self.channels):
            if level > 0:
                h = Conv(ch, (3, 3), strides=(2, 2))(h)
            for _ in range(self.blocks):
                h = ModulatedBlock(ch, self.groups, self.dropout)(h, emb, train)
        h = nn.silu(nn.GroupNorm(self.groups)(h)).mean(axis=(1, 2))
        return jax.nn.log_softmax(nn.Dense(self.num_classes)(h))


class Evaluator(nn.Module):
    """A clean-image CNN for measuring samples: x (B, H, W, C) → log-probs (B, K).

    conv(32, 3×3) → pool → conv(64, 3×3) → pool → flatten(H/4 · W/4 · 64, 3136 for MNIST)
    → fc(128) → fc(K); H and W multiples of 4, fixed (as C) by the variables.
    `features(x)` gives the penultimate activations (B, 128) used for Fréchet distances.
    Independent of the guidance classifier by construction: trained on clean images only.
    """

    num_classes: int = NUM_CLASSES
    dropout: float = 0.3

    def __post_init__(self):
        check_head(self.num_classes, self.dropout)
        super().__post_init__()

    def setup(self):
        self.conv1 = Conv(32, (3, 3))
        self.conv2 = Conv(64, (3, 3))
        self.fc = nn.Dense(128)
        self.head = nn.Dense(self.num_classes)
        self.drop = nn.Dropout(self.dropout)

    def features(self, x, train: bool = False):
        check_images(x, channels=fitted_channels(self, "conv1"), size=self._fitted_size(),
                     multiple=4, fitted=True)
        h = max_pool_2x2(nn.relu(self.conv1(x)))
        h = max_pool_2x2(nn.relu(self.conv2(h)))
        h = self.drop(h.reshape(h.shape[0], -1), deterministic=not train)
        return nn.relu(self.fc(h))

    def _fitted_size(self) -> tuple[int, int] | None:
        """The image size (H, W) that fc's variables were made for, or None while
        initializing. Recovered from fc's input width H/4 · W/4 · 64, which fixes only square
        sizes (every dataset in data.DATASETS is square); for another, None too."""
        kernel = self.variables.get("params", {}).get("fc", {}).get("kernel")
        side = None if kernel is None else round((kernel.shape[0] / 64) ** 0.5)
        return None if side is None or 64 * side * side != kernel.shape[0] else (4 * side,) * 2

    def __call__(self, x, t=None, train: bool = False):
        del t  # Clean images only; accepts t to share the training code.
        h = self.drop(self.features(x, train), deterministic=not train)
        return jax.nn.log_softmax(self.head(h))
