"""The checks every network runs on its inputs when traced (shapes and dtypes; values when
concrete), and on its widths when constructed: one place for the networks of `jaxguide.nets`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxguide.checks import check_array, check_int, check_ints, invalid, is_concrete
from jaxguide.checks import check_times as check_time_values


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
