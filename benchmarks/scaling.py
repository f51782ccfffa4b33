"""Throughput against device count: guided sampling and training, data-parallel.

    python benchmarks/scaling.py                      # 1, 2, 4 simulated CPU devices
    python benchmarks/scaling.py --real               # the real devices (e.g. GPUs): 1, 2, .. all

Each device count runs in its own subprocess (simulated CPU devices need
XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts). The global batch is
fixed, so N devices each get batch / N. Simulated devices share the host's cores: their
speed-up is bounded by the core count, and the numbers show the overhead of the sharded
program rather than a cluster's scaling. Prints a table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def measure(devices: int, batch: int, steps: int, train_steps: int, repeats: int) -> dict:
    """Runs in the child: images/s of guided sampling and of denoiser training on `devices`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxguide import parallel, pipeline, training
    from jaxguide.configs import get_config
    from jaxguide.nets import make_model
    from throughput import best_time

    mesh = parallel.make_mesh(devices)
    pipe = pipeline.load_pipeline(ROOT / "checkpoints")
    labels = jnp.arange(batch) % pipe.num_classes

    run = lambda: pipeline.generate(jax.random.key(0), pipe, labels, 32.0, n_steps=steps,
                                    mesh=mesh)
    compile_s = best_time(run, 1)  # The first call compiles.
    sample_s = best_time(run, repeats)

    cfg = get_config("denoiser").replace(batch_size=batch)
    model, tx = make_model(cfg.model, cfg.kwargs), training.make_optimizer(cfg)
    state = parallel.replicate(mesh, training.create_state(cfg, model, tx))
    step = training.make_train_step(cfg, model, tx, mesh)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch, 28, 28, 1)).astype(np.float32)
    images, labels = parallel.shard_batch(mesh, images, np.zeros(batch, np.int32))
    state, loss = step(state, images, labels)
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(train_steps):
        state, loss = step(state, images, labels)
    loss.block_until_ready()
    train_s = (time.perf_counter() - t0) / train_steps
    return {"devices": devices, "platform": jax.devices()[0].platform, "batch": batch,
            "sample_steps": steps, "sample_compile_s": compile_s, "sample_s": sample_s,
            "sample_images_per_s": batch / sample_s, "train_step_s": train_s,
            "train_images_per_s": batch / train_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1,2,4", help="device counts to measure")
    p.add_argument("--real", action="store_true", help="use the real devices, not simulated CPUs")
    p.add_argument("--batch", type=int, default=80, help="global batch (a multiple of each count)")
    p.add_argument("--steps", type=int, default=50, help="guided sampling steps")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling.jsonl"))
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.steps, args.train_steps,
                                 args.repeats)))
        return
    rows = []
    for n in map(int, args.devices.split(",")):
        env = dict(os.environ)
        if not args.real:
            env.update(JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        cmd = [sys.executable, __file__, "--child", str(n), "--batch", str(args.batch),
               "--steps", str(args.steps), "--train-steps", str(args.train_steps),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = rows[0]
    print(f"\n{'devices':>7} {'sample img/s':>12} {'x':>5} {'train img/s':>11} {'x':>5}")
    for r in rows:
        print(f"{r['devices']:>7} {r['sample_images_per_s']:>12.1f} "
              f"{r['sample_images_per_s'] / base['sample_images_per_s']:>5.2f} "
              f"{r['train_images_per_s']:>11.1f} "
              f"{r['train_images_per_s'] / base['train_images_per_s']:>5.2f}")


if __name__ == "__main__":
    main()
