"""How jaxguide compiles: `jit` is `jax.jit` with `COMPILER_OPTIONS`.

XLA:CPU (jaxlib 0.10 and 0.11) hands dots and convolutions to YNNPACK fusions by default.
On the AVX2 x86-64 CPU measured here those ran the UNet's 3×3 convolutions at 25–90
GFLOP/s against 100–150 for XLA's own kernels; turning them off made the UNet's training
step 2.2× faster (benchmarks/throughput.py, section `train`: columns naive and xla). The
option is one of XLA's debug options for CPU: GPU and TPU compilations ignore it.

    from jaxguide.compiler import jit, COMPILER_OPTIONS
    fast = jit(score_fn)                                        # jaxguide's own choice
    mine = jax.jit(score_fn, compiler_options=COMPILER_OPTIONS)  # the same, spelled out
"""

from __future__ import annotations

import functools

import jax

# An empty list of YNNPACK fusion types: every dot and convolution stays with XLA:CPU.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
