"""How jaxguide compiles: `jit` is `jax.jit` with `COMPILER_OPTIONS` at the top level.

XLA:CPU (jaxlib 0.10 and 0.11) hands dots and convolutions to YNNPACK fusions by default.
On the AVX2 x86-64 CPU measured here those ran the UNet's 3×3 convolutions at 25–90
GFLOP/s against 100–150 for XLA's own kernels; turning them off made the UNet's training
step 2.2× faster (benchmarks/throughput.py, section `train`: columns naive and xla). The
option is one of XLA's debug options for CPU: GPU and TPU compilations ignore it.

JAX accepts compiler options only on a top-level `jax.jit`, so a jaxguide function called
inside the caller's own `jit`, `scan`, `vmap` or `grad` is a plain `jax.jit` there (it is
compiled as part of the caller's program, with the caller's options):

    from jaxguide.compiler import jit, COMPILER_OPTIONS
    fast = jit(score_fn)                                        # jaxguide's own choice
    mine = jax.jit(score_fn, compiler_options=COMPILER_OPTIONS)  # the same, spelled out
    jax.jit(lambda key: jg.sample(key, ...))                    # fine: sample's jit is plain
"""

from __future__ import annotations

import functools

import jax

try:  # JAX's own test for "not inside a trace" (jax2tf uses it); private, hence the fallback.
    from jax._src.core import trace_state_clean as _top_level
except ImportError:  # pragma: no cover - a JAX without it: always the plain jit, still correct.
    _top_level = lambda: False  # noqa: E731

# An empty list of YNNPACK fusion types: every dot and convolution stays with XLA:CPU.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


class _Jit:
    """`jax.jit(fun, **kwargs)`, with `compiler_options=COMPILER_OPTIONS` when called (or
    lowered) outside any trace. Attributes (`lower`, `trace`, ...) are the chosen jit's."""

    def __init__(self, fun, **kwargs):
        functools.update_wrapper(self, fun)
        self._plain = jax.jit(fun, **kwargs)
        self._tuned = jax.jit(fun, compiler_options=COMPILER_OPTIONS, **kwargs)

    def _chosen(self):
        return self._tuned if _top_level() else self._plain

    def __call__(self, *args, **kwargs):
        return self._chosen()(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_plain", "_tuned"):
            raise AttributeError(name)
        return getattr(self._chosen(), name)


def jit(fun=None, /, **kwargs):
    """`jax.jit` with jaxguide's compiler options; usable as `@jit` or `@jit(**kwargs)`."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _Jit(fun, **kwargs)
