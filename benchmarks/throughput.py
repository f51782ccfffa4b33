"""Throughput of sampling and training, with ratios measured side by side in one run.

    python benchmarks/throughput.py                    # all sections (about 18 min on 2 cores)
    python benchmarks/throughput.py --sections train   # one section: sample, compile, train,
                                                       # layout, roofline

Sections (each prints JSON lines, then a table; everything lands in <out>):
* sample: guided and unguided Euler–Maruyama sampling with the bundled models, batch 8, 80
  and 256: images/s and ms per step; and guided batch 80 "naive" (XLA's convolutions under
  a plain jax.jit) for comparison.
* compile: compilation time and memory of `sample` for 100 and 1000 steps (one lax.scan:
  neither should grow with the number of steps).
* train: training images/s of each network: "naive" (XLA's convolutions under a plain
  jax.jit), and under jaxguide's `jit` (jaxguide.compiler) with XLA's convolutions ("xla"),
  with what jaxguide selects ("auto": on CPU depthwise convs as shifted adds, 1×1 convs as
  dots, dense_conv for the rest) and with every conv in GEMM form ("gemm"); same
  parameters, same outputs up to float32 rounding.
* layout: SeedUNet's forward pass on NHWC activations against batch-minor (C, H, W, B) ones
  (`SeedUNet.layout`), alternating, for batches 8 to 256: where "auto" switches layouts.
* roofline: this machine's GFLOP/s on a 2048³ matmul and the FLOPs of each training step
  (XLA's cost analysis), to put the training rates in proportion.
Wall times are best-of-`--repeats` (training variants alternate round by round); on a shared
machine compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxguide import pipeline, samplers, training  # noqa: E402
from jaxguide.compiler import jit  # noqa: E402
from jaxguide.configs import get_config  # noqa: E402
from jaxguide.scores import classifier_guidance  # noqa: E402
from jaxguide.nets import SeedUNet, make_model  # noqa: E402
from jaxguide.nets.conv import conv_impl, prefers_batch_minor  # noqa: E402
from jaxguide.samplers import sample, time_grid  # noqa: E402


def best_time(fn, repeats):
    """The shortest of `repeats` wall times of fn() (its result waited for)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def memory_mib(compiled) -> float | None:
    """Peak memory of a compiled program by XLA's accounting: arguments + outputs + temps."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return (total - m.alias_size_in_bytes) / 2**20


def sampling_fn(pipe, batch, steps, guided):
    """(jitted-call thunk, lowered) for `steps` EM steps of `batch` images."""
    labels = jnp.arange(batch) % pipe.num_classes
    score = (classifier_guidance(pipe.score_fn, pipe.log_prob_fn, labels, 32.0)
             if guided else pipe.score_fn)
    shape = (batch,) + pipe.image_shape
    run = lambda: sample(jax.random.key(0), score, pipe.sde, shape, n_steps=steps)
    return run


def section_sample(pipe, args):
    rows = []
    for guided in (False, True):
        for batch in args.batches:
            rows.append(time_sampling(pipe, args, batch, guided, "jaxguide"))
    with naive_sampler():  # At the figure's batch (80) when measured.
        batch = 80 if 80 in args.batches else args.batches[0]
        rows.append(time_sampling(pipe, args, batch, True, "naive"))
    return rows


def time_sampling(pipe, args, batch, guided, variant):
    run = sampling_fn(pipe, batch, args.steps, guided)
    jax.block_until_ready(run())  # Compile.
    s = best_time(run, args.repeats)
    row = {"section": "sample", "variant": variant, "guided": guided, "batch": batch,
           "steps": args.steps, "seconds": s, "images_per_s": batch / s,
           "ms_per_step": 1e3 * s / args.steps}
    print(json.dumps(row), flush=True)
    return row


@contextlib.contextmanager
def naive_sampler():
    """`sample` with XLA's convolutions under a plain jax.jit (no jaxguide compiler options)."""
    jitted = samplers._sample
    samplers._sample = jax.jit(jitted.__wrapped__, static_argnames=samplers._STATIC_ARGNAMES)
    try:
        with conv_impl("xla"):
            yield
    finally:
        samplers._sample = jitted


def section_compile(pipe, args):
    from jaxguide.samplers import _sample  # The jitted core: lower and compile it directly.

    rows = []
    for steps in (100, 1000):
        labels = jnp.arange(80) % pipe.num_classes
        score = classifier_guidance(pipe.score_fn, pipe.log_prob_fn, labels, 32.0)
        kwargs = dict(shape=(80,) + pipe.image_shape, n_steps=steps, method="euler_maruyama",
                      init="prior", clip=10.0, denoise_last=True, snr=0.16, record_every=None,
                      mesh=None)
        jax.clear_caches()  # Measure a compilation, not a cache hit from the sample section.
        t0 = time.perf_counter()
        lowered = _sample.lower(jax.random.key(0), score, pipe.sde,
                                jnp.arange(80, dtype=jnp.uint32),
                                time_grid(pipe.sde, steps, 1e-3, "uniform"), **kwargs)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        rows.append({"section": "compile", "steps": steps, "batch": 80, "trace_s": t1 - t0,
                     "compile_s": t2 - t1, "memory_mib": memory_mib(compiled)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# (name, convs, jaxguide's compiler options): "naive" is plain Flax convs under plain jax.jit.
TRAIN_VARIANTS = (("naive", "xla", False), ("xla", "xla", True), ("auto", "auto", True),
                  ("gemm", "gemm", True))


TASK_OF = {"unet": "denoiser", "seed": "denoiser", "classifier": "classifier"}


def train_parts(model_name, batch):
    """(config, initial state, jitted train step) of `model_name`, traced in the current
    conv_impl."""
    cfg = get_config(TASK_OF[model_name], model_name).replace(batch_size=batch)
    model, tx = make_model(cfg.model, cfg.kwargs), training.make_optimizer(cfg)
    return cfg, training.create_state(cfg, model, tx), training.make_train_step(cfg, model, tx)


def section_train(args):
    """Each model's variants are compiled first, then timed in alternation (`--repeats`
    rounds, best of each): a slow spell of a shared machine hits every variant alike."""
    rows = []
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (args.train_batch, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, args.train_batch), jnp.int32)
    for model_name in args.models.split(","):
        runs, compile_s = {}, {}
        for variant, convs, options in TRAIN_VARIANTS:
            with conv_impl(convs):
                cfg, state, step = train_parts(model_name, args.train_batch)
                if not options:
                    step = jax.jit(step.__wrapped__, donate_argnums=0)
                t0 = time.perf_counter()
                state, loss = step(state, images, labels)  # Traced here, inside the context.
                jax.block_until_ready(loss)
                compile_s[variant] = time.perf_counter() - t0
            runs[variant] = functools.partial(_train_steps, step, [state], images, labels,
                                              args.train_steps)
        times = {v: [] for v in runs}
        for _ in range(args.repeats):
            for v, run in runs.items():
                times[v].append(best_time(run, 1) / args.train_steps)
        for variant, convs, options in TRAIN_VARIANTS:
            s = min(times[variant])
            rows.append({"section": "train", "model": model_name, "variant": variant,
                         "convs": convs, "compiler_options": options, "batch": cfg.batch_size,
                         "step_s": s, "images_per_s": cfg.batch_size / s,
                         "step_times_s": times[variant], "first_step_s": compile_s[variant]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _train_steps(step, box, images, labels, n):
    """n train steps from the state in box[0] (updated in place); returns the last loss."""
    for _ in range(n):
        box[0], loss = step(box[0], images, labels)
    return loss


def section_layout(args):
    """SeedUNet's eval-mode forward pass (jaxguide's jit) with NHWC and batch-minor
    activations, per batch: compiled first, then `--repeats` alternating rounds of 3 calls."""
    rows = []
    rng = np.random.default_rng(0)
    variables = SeedUNet().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros(1))
    for batch in args.layout_batches:
        x = jnp.asarray(rng.uniform(-1, 1, (batch, 28, 28, 1)), jnp.float32)
        t = jnp.linspace(0.01, 1.0, batch)
        fns = {layout: jit(SeedUNet(layout=layout).apply) for layout in ("NHWC", "CHWB")}
        for fn in fns.values():
            jax.block_until_ready(fn(variables, x, t))
        times = {layout: [] for layout in fns}
        for _ in range(args.repeats):
            for layout, fn in fns.items():
                times[layout].append(best_time(lambda: fn(variables, x, t), 3))
        rows.append({"section": "layout", "model": "seed", "batch": batch,
                     "nhwc_ms": 1e3 * min(times["NHWC"]), "chwb_ms": 1e3 * min(times["CHWB"]),
                     "auto": "CHWB" if prefers_batch_minor(batch) else "NHWC",
                     "times_s": times})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section_roofline(args):
    """This machine's dense-GEMM rate and each training step's FLOPs (XLA's cost analysis):
    how far a network's training could go if every FLOP ran at GEMM speed."""
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    matmul = jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    rows = [{"section": "roofline", "what": f"matmul {n}^3",
             "gflop_per_s": 2 * n**3 / best_time(lambda: matmul(a), 5) / 1e9}]
    print(json.dumps(rows[-1]), flush=True)
    for model_name in args.models.split(","):
        cfg, state, step = train_parts(model_name, args.train_batch)
        images = jnp.zeros((cfg.batch_size, 28, 28, 1))
        labels = jnp.zeros(cfg.batch_size, jnp.int32)
        cost = step.lower(state, images, labels).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        rows.append({"section": "roofline", "what": f"train step {model_name}",
                     "batch": cfg.batch_size, "gflop": cost["flops"] / 1e9})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def print_tables(rows):
    sample_rows = [r for r in rows if r["section"] == "sample" and r["variant"] == "jaxguide"]
    if sample_rows:
        print(f"\nsampling, {sample_rows[0]['steps']} Euler–Maruyama steps")
        print(f"{'batch':>5} {'unguided img/s':>14} {'guided img/s':>12} {'guided ms/step':>14} "
              f"{'guided/unguided time':>20}")
        for b in sorted({r["batch"] for r in sample_rows}):
            u = next(r for r in sample_rows if r["batch"] == b and not r["guided"])
            g = next(r for r in sample_rows if r["batch"] == b and r["guided"])
            print(f"{b:>5} {u['images_per_s']:>14.1f} {g['images_per_s']:>12.1f} "
                  f"{g['ms_per_step']:>14.1f} {g['seconds'] / u['seconds']:>20.2f}")
        naive = [r for r in rows if r["section"] == "sample" and r["variant"] == "naive"]
        for n in naive:
            g = next(r for r in sample_rows if r["batch"] == n["batch"] and r["guided"])
            print(f"guided batch {n['batch']}: naive (plain jax.jit, XLA convs) "
                  f"{n['images_per_s']:.2f} img/s, jaxguide {g['images_per_s']:.2f} img/s: "
                  f"{n['seconds'] / g['seconds']:.2f}x")
    comp = [r for r in rows if r["section"] == "compile"]
    if comp:
        print(f"\n{'steps':>5} {'trace s':>7} {'compile s':>9} {'memory MiB':>10}")
        for r in comp:
            mem = "n/a" if r["memory_mib"] is None else f"{r['memory_mib']:.1f}"
            print(f"{r['steps']:>5} {r['trace_s']:>7.2f} {r['compile_s']:>9.2f} {mem:>10}")
    train = [r for r in rows if r["section"] == "train"]
    if train:
        names = [v[0] for v in TRAIN_VARIANTS]
        print(f"\ntraining images/s, batch {train[0]['batch']}")
        print(f"{'model':>10} " + " ".join(f"{n:>7}" for n in names) + " auto/naive")
        for m in dict.fromkeys(r["model"] for r in train):
            ips = {r["variant"]: r["images_per_s"] for r in train if r["model"] == m}
            print(f"{m:>10} " + " ".join(f"{ips[n]:>7.1f}" for n in names)
                  + f" {ips['auto'] / ips['naive']:>9.2f}x")
    layout = [r for r in rows if r["section"] == "layout"]
    if layout:
        print(f"\nSeedUNet forward ms: {'batch':>5} {'NHWC':>7} {'CHWB':>7} {'NHWC/CHWB':>9} auto")
        for r in layout:
            print(f"{'':>20} {r['batch']:>5} {r['nhwc_ms']:>7.1f} {r['chwb_ms']:>7.1f} "
                  f"{r['nhwc_ms'] / r['chwb_ms']:>9.2f} {r['auto']}")
    roof = [r for r in rows if r["section"] == "roofline"]
    if roof:
        print(f"\n{roof[0]['what']}: {roof[0]['gflop_per_s']:.1f} GFLOP/s")
        for r in roof[1:]:
            print(f"{r['what']} (batch {r['batch']}): {r['gflop']:.2f} GFLOP")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="sample,compile,train,layout,roofline")
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--batches", default="8,80,256")
    p.add_argument("--steps", type=int, default=100, help="sampling steps per measurement")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--models", default="unet,seed,classifier", help="networks to train")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--layout-batches", default="8,16,32,80,256")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.jsonl"))
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.layout_batches = [int(b) for b in args.layout_batches.split(",")]
    sections = args.sections.split(",")
    header = {"section": "machine", "backend": jax.default_backend(),
              "device": str(jax.devices()[0].device_kind), "cpu_count": jax.local_device_count()
              if jax.default_backend() != "cpu" else __import__("os").cpu_count(),
              "jax": jax.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(header), flush=True)
    rows = [header]
    pipe = pipeline.load_pipeline(args.checkpoint_dir)
    if "sample" in sections:
        rows += section_sample(pipe, args)
    if "compile" in sections:
        rows += section_compile(pipe, args)
    if "train" in sections:
        rows += section_train(args)
    if "layout" in sections:
        rows += section_layout(args)
    if "roofline" in sections:
        rows += section_roofline(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print_tables(rows)


if __name__ == "__main__":
    main()
