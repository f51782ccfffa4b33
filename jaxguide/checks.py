"""Argument checks shared by jaxguide's modules: each raises a ValueError or TypeError that
says `name: got <value>, accepted <range>`.

Values are checked when concrete; inside `jit`, `grad` or `vmap` only shapes and dtypes are
known, and those are checked at trace time.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = 2**31 - 1
# float32's normal range: a float parameter outside it is 0 or inf once cast to float32.
F32_TINY, F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
MAX_ELEMENTS = INT32_MAX  # Elements of one batch of samples (XLA:CPU indexes with int32).
MAX_INTEGRAL_BETA = 1e4  # ∫₀ᵀβ of a VPSDE: m(T) = exp(−½∫β) is 0 in float32 from ∫β ≈ 207 on.
SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits of a seed: larger ones repeat smaller ones.


def as_scalar(value):
    """A concrete 0-d bool or real JAX or NumPy array as its Python bool or number; any
    other value unchanged."""
    if (isinstance(value, (jax.Array, np.ndarray)) and is_concrete(value) and value.ndim == 0
            and np.dtype(value.dtype).kind in "biuf"):
        return value.item()
    return value


def invalid(name: str, got: str, accepted: str, error: type[Exception] = ValueError) -> Exception:
    """The error `name: got <got>, accepted <accepted>`, to raise; `got` is text (a repr, or
    e.g. "shape (3,)")."""
    return error(f"{name}: got {got}, accepted {accepted}")


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """value, if it is one of the strings `choices`."""
    if not (isinstance(value, str) and value in choices):
        raise invalid(name, repr(value), ", ".join(choices))
    return value


def check_number(name: str, value, accepted: str, ok: Callable[[Any], bool], *,
                 integer: bool = False) -> int | float:
    """`value` as a Python int (`integer`) or float, if it is such a number for which `ok` holds.

    Python, NumPy and 0-d JAX numbers are accepted alike; bools are not numbers here. Raises
    TypeError (not a number) or ValueError (another number, NaN included), both saying
    `name: got <value>, accepted <accepted>`.
    """
    value = as_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: got {value!r}, accepted {accepted}")
    if (integer and not isinstance(value, numbers.Integral)) or value != value or not ok(value):
        raise ValueError(f"{name}: got {value!r}, accepted {accepted}")
    return int(value) if integer else float(value)


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """`value` as a Python int, if it is an integer in [lo, hi] (hi None: no upper bound)."""
    accepted = f"an integer >= {lo}" + ("" if hi is None else f" and <= {hi}")
    return check_number(name, value, accepted, lambda v: lo <= v and (hi is None or v <= hi),
                        integer=True)


def check_ints(name: str, values, lo: int) -> tuple[int, ...]:
    """`values` as a tuple of Python ints, if it is a non-empty sequence of integers >= lo."""
    accepted = f"a non-empty sequence of integers >= {lo}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise invalid(name, repr(values), accepted, TypeError)
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                             and v >= lo for v in values):
        raise invalid(name, repr(values), accepted)
    return tuple(int(v) for v in values)


def is_concrete(a) -> bool:
    """Whether a's value is known now (it is not a tracer)."""
    return not isinstance(a, jax.core.Tracer)


def is_real(value) -> bool:
    """A real Python, NumPy or 0-d JAX number, not a bool and not NaN."""
    value = as_scalar(value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value


def check_shape(shape) -> tuple[int, ...]:
    """A batch shape (B, ...) of positive integers, at most MAX_ELEMENTS elements in all."""
    try:
        dims = tuple(as_scalar(d) for d in shape)
    except TypeError:
        dims = ()
    if not dims or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
                       for d in dims):
        raise invalid("shape", repr(shape), "a tuple of positive integers (B, ...)")
    if math.prod(dims) > MAX_ELEMENTS:
        raise invalid("shape", f"{shape!r}, {math.prod(dims)} elements", f"at most {MAX_ELEMENTS}"
                      " in one batch (sample in batches: `indices`)")
    return tuple(int(d) for d in dims)


def check_bool(name: str, value) -> bool:
    """A Python, NumPy or concrete 0-d JAX bool."""
    value = as_scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(name, repr(value), "True or False", TypeError)
    return bool(value)


def check_output(name: str, out, x) -> None:
    """A function's output must be an array of x's shape (checked when traced)."""
    what = f"{name}: returned"
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise TypeError(f"{what} a {type(out).__name__} for x of shape {x.shape}, accepted an "
                        "array of the shape of x")
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"{what} shape {out.shape} for x of shape {x.shape}, accepted x's shape")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{what} dtype {out.dtype}, accepted a real floating array")


def check_key(key) -> None:
    """One typed PRNG key, shape ()."""
    accepted = "a single typed key from jax.random.key(seed)"
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise invalid("key", type(key).__name__, accepted, TypeError)
    if key.shape != ():
        raise invalid("key", f"keys of shape {key.shape}", accepted)


def check_batch(name, value, x) -> None:
    """A per-example value must be () or (B,) for x (B, ...): checked when traced."""
    b = x.shape[0]
    if jnp.shape(value) not in ((), (b,)):
        raise invalid(name, f"shape {jnp.shape(value)} for a batch of {b} images", f"() or ({b},)")


def check_float_dtype(name, dtype) -> None:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise invalid(name, repr(dtype), "a floating dtype", TypeError) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise invalid(name, f"dtype {dtype.name}", "a floating dtype")


def check_array(name: str, x) -> None:
    """x must be an array (JAX or NumPy), not a list or a number."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise invalid(name, f"a {type(x).__name__}", "an array", TypeError)


def check_float_array(name: str, x) -> None:
    """x must be an array of a floating dtype (e.g. what `jax.grad` differentiates)."""
    check_array(name, x)
    check_float_dtype(name, x.dtype)


def check_times(t, hi=math.inf) -> None:
    """Times are a real number or a real array (checked when traced); concrete ones must be
    finite and in [0, hi] (compared in t's own precision), and finite in float32."""
    if isinstance(t, bool) or not (isinstance(t, numbers.Real)
                                   or np.dtype(getattr(t, "dtype", object)).kind in "iuf"):
        raise invalid("t", reprlib.repr(t), "a real number or a real array of times", TypeError)
    if not is_concrete(t):
        return
    arr = np.asarray(t)
    arr = arr if arr.dtype.kind == "f" else arr.astype(np.float64)
    with np.errstate(over="ignore"):  # Networks take times in float32: 1e300 is inf there.
        ok = (arr >= 0) & (arr <= arr.dtype.type(hi)) & np.isfinite(arr.astype(np.float32))
    if not np.all(ok):
        accepted = "a finite time >= 0 (in float32)" if hi == math.inf else f"a time in [0, T={hi}]"
        raise invalid("t", str(arr[~ok].ravel()[0]), accepted)


def check_pixels(name: str, x: np.ndarray) -> None:
    """Images must hold finite values in [-1, 1] (up to a float rounding of 1e-3)."""
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contain NaN or inf, accepted finite values in [-1, 1]")
    if x.min() < -1.001 or x.max() > 1.001:
        raise ValueError(f"{name}: values span [{x.min():.3g}, {x.max():.3g}], accepted [-1, 1]")


def check_num_classes(num_classes, log_prob_fn):
    """num_classes, else that of log_prob_fn's model (`nets.apply_fn`), else None; a given
    num_classes must be that model's."""
    model = getattr(getattr(log_prob_fn, "func", None), "model", None)
    model_k = getattr(model, "num_classes", None)
    if not isinstance(model_k, int):
        model_k = None
    if num_classes is None:
        return model_k
    num_classes = check_int("num_classes", num_classes, 1, INT32_MAX)
    if model_k is not None and num_classes != model_k:
        raise invalid("num_classes", num_classes, f"{model_k} (the classes of log_prob_fn's model)")
    return num_classes


def check_target_labels(labels, num_classes):
    """The classes to guide towards, () or (B,) integers in [0, num_classes), as int32; a
    traced array must be of an integer dtype (its values are checked where applied)."""
    if not is_concrete(labels):
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise invalid("labels", f"a traced array of dtype {labels.dtype}", "integer classes")
        return jnp.asarray(labels, jnp.int32)
    try:
        arr = np.asarray(labels)
    except ValueError:  # Ragged.
        arr = np.asarray(None)
    if arr.ndim > 1 or not (arr.dtype.kind in "iu" or arr.dtype.kind == "f"
                            and np.all(arr == np.round(arr))):
        raise invalid("labels", reprlib.repr(labels), "integer class indices of shape () or (B,)")
    hi = num_classes if num_classes is not None else INT32_MAX + 1  # Applied as int32.
    if arr.size and (arr.min() < 0 or arr.max() >= hi):
        raise invalid("labels", str(arr[(arr < 0) | (arr >= hi)].ravel()[0]), f"[0, {hi - 1}]")
    return jnp.asarray(labels, jnp.int32)


def check_scale(scale):
    """A real scale >= 0, () or (B,), finite in float32 (the dtype it is applied in); a traced
    one must be real (where applied, a negative one makes its images NaN)."""
    if not is_concrete(scale):
        if np.dtype(scale.dtype).kind not in "iuf":
            raise invalid("scale", f"a traced array of dtype {scale.dtype}", "a real number >= 0")
        return jnp.asarray(scale, jnp.float32)
    arr = np.asarray(scale)
    with np.errstate(over="ignore"):  # 1e39 becomes inf, and is rejected.
        ok = arr.dtype.kind in "iuf" and arr.ndim <= 1 and np.all(arr.astype(np.float32) >= 0)
        ok = ok and np.all(np.isfinite(arr.astype(np.float32)))
    if not ok:
        raise invalid("scale", repr(scale), "a finite number >= 0 that fits float32 "
                      "(<= 3.4e38), a scalar or one per example")
    return jnp.asarray(scale, jnp.float32)


def check_interval(interval) -> tuple[jax.Array, jax.Array]:
    """(t_lo, t_hi), real numbers with 0 <= t_lo <= t_hi when concrete, as float32."""
    try:
        lo, hi = interval
    except (TypeError, ValueError):
        raise invalid("interval", reprlib.repr(interval), "a pair (t_lo, t_hi) or None") from None
    if is_concrete(lo) and is_concrete(hi) and not (is_real(lo) and is_real(hi) and 0 <= lo <= hi):
        raise invalid("interval", f"({lo!r}, {hi!r})", "real times 0 <= t_lo <= t_hi")
    return jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)


def check_schedule_field(name: str, value) -> float:
    """beta_min, beta_max or T: a finite number > 0 in float32's normal range, as a float."""
    if not (is_real(value) and F32_TINY <= value <= F32_MAX):  # Else 0 or inf in float32.
        raise invalid(f"VPSDE: {name}", repr(value),
                      f"a number in float32's normal range [{F32_TINY:.3g}, {F32_MAX:.3g}]")
    return float(value)


def check_schedule(beta_min: float, beta_max: float, T: float) -> None:
    """beta_max >= beta_min, and ∫₀ᵀβ small enough for float32 (MAX_INTEGRAL_BETA)."""
    if beta_max < beta_min:
        raise invalid("VPSDE: beta_max", f"{beta_max} < beta_min={beta_min}", ">= beta_min")
    total = beta_min * T + 0.5 * T * T * (beta_max - beta_min)
    # m(T) is 0 in float32 from ∫β ≈ 207; beyond MAX_INTEGRAL_BETA the samplers overflow.
    if total > MAX_INTEGRAL_BETA:
        raise invalid("VPSDE: the schedule's integral of beta over [0, T]", f"{total:.6g}",
                      f"<= {MAX_INTEGRAL_BETA:g} (beta_min, beta_max, T = {beta_min:g}, "
                      f"{beta_max:g}, {T:g})")
