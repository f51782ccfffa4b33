"""Denoiser recipes compared by unguided sample quality against training images seen.

    # short runs of equal wall time, each recipe's FD curve (N = 1000) at 4 checkpoints
    python benchmarks/denoiser_recipes.py train --data-dir ../shared/data/mnist \
        --root /tmp/recipes --minutes 8 --recipes base attn wide
    # the FD curve of any training work dir (e.g. a long train.py run), every kept checkpoint
    python benchmarks/denoiser_recipes.py curve --data-dir ../shared/data/mnist runs/denoiser

Each recipe trains for `--minutes` of this machine's time (its step count is set from a
timed step, so the learning-rate schedule completes). Unguided samples: N images, 50
Euler–Maruyama steps, one seed; FD in the evaluator's features against the test set, beside
the real-data floor (N training digits). Writes <root>/recipes.json and recipes.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxguide import checkpoint, configs, data, metrics, training  # noqa: E402
from jaxguide.nets import apply_fn, make_model  # noqa: E402
from jaxguide.samplers import sample
from jaxguide.scores import score_from_eps  # noqa: E402

RECIPES = {
    "base": dict(channels=(32, 64), blocks=2, emb_dim=128),
    "attn": dict(channels=(32, 64), blocks=2, emb_dim=128, attention=True),
    "wide": dict(channels=(48, 96), blocks=2, emb_dim=128, attention=True),
    "lean": dict(channels=(32, 64), blocks=1, emb_dim=128, attention=True),
}


def seconds_per_step(cfg) -> float:
    """Time of one training step of cfg on random images (after compiling)."""
    model = make_model(cfg.model, cfg.kwargs)
    tx = training.make_optimizer(cfg)
    state = training.create_state(cfg, model, tx)
    step = training.make_train_step(cfg, model, tx)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (cfg.batch_size,) + data.IMAGE_SHAPE),
                    jnp.float32)
    y = jnp.zeros(cfg.batch_size, jnp.int32)
    state, loss = step(state, x, y)
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(5):
        state, loss = step(state, x, y)
    loss.block_until_ready()
    return (time.perf_counter() - t0) / 5


def unguided_fd(model_dir, evaluator, ref, n: int, steps: int = 50, seed: int = 0,
                batch: int = 500) -> float:
    """FD of n unguided samples of the denoiser in model_dir against `ref`."""
    model, variables, meta = checkpoint.load_model(model_dir, task="denoiser")
    sde = training.sde_of(configs.TrainConfig.from_dict(meta["config"]))
    score = score_from_eps(apply_fn(model, variables), sde)
    images = [np.asarray(jnp.clip(sample(jax.random.key(seed), score, sde,
                                         (min(batch, n - lo),) + data.IMAGE_SHAPE, n_steps=steps,
                                         indices=jnp.arange(lo, min(lo + batch, n))), -1, 1))
              for lo in range(0, n, batch)]
    feats = evaluator(np.concatenate(images)).features
    return metrics.frechet_from_stats(*metrics.gaussian_stats(feats), ref["mu"], ref["cov"])


def curve(workdir: Path, evaluator, ref, n: int, every: int = 1) -> list[dict]:
    """Unguided FD at every checkpoint kept in a training work dir whose step is a multiple of
    `every` (and at the last one)."""
    with checkpoint.manager(workdir) as mgr:
        steps = sorted(mgr.all_steps())
    steps = [s for s in steps if s % every == 0 or s == steps[-1]]
    rows = []
    for step in steps:
        with tempfile.TemporaryDirectory() as tmp:
            out = training.export(workdir, step, Path(tmp) / "model")
            batch = json.loads((out / "metadata.json").read_text())["config"]["batch_size"]
            t0 = time.perf_counter()
            fd = unguided_fd(out, evaluator, ref, n)
        rows.append({"workdir": str(workdir), "step": step,
                     "images_seen": step * batch, "fd": fd,
                     "eval_seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def real_floor(evaluator, ref, n: int, seed: int, data_dir) -> float:
    images, _ = data.load_mnist("train", data_dir)
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    feats = evaluator(images[idx]).features
    return metrics.frechet_from_stats(*metrics.gaussian_stats(feats), ref["mu"], ref["cov"])


def plot(rows, floors, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["recipe"] for r in rows):
        pts = [r for r in rows if r["recipe"] == name]
        ax.plot([r["images_seen"] for r in pts], [r["fd"] for r in pts], "o-", label=name)
    for f in floors:
        ax.axhline(f, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="training images seen", ylabel="unguided FD (evaluator features)",
           yscale="log", title=f"denoiser recipes, N = {rows[0]['n']} (dashed: real digits)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "curve"))
    p.add_argument("workdirs", nargs="*", type=Path, help="curve: training work dirs")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--root", type=Path, default=Path("runs/recipes"), help="train: output root")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--recipes", nargs="+", default=["base", "attn", "wide"], choices=RECIPES)
    p.add_argument("--points", type=int, default=4, help="checkpoints evaluated per recipe")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--every", type=int, default=1, help="curve: only steps that are multiples")
    p.add_argument("--evaluator", default=str(ROOT / "checkpoints" / "evaluator"))
    args = p.parse_args(argv)

    evaluator = metrics.Evaluator(args.evaluator)
    ref = evaluator.reference()
    floors = [real_floor(evaluator, ref, args.n, s, args.data_dir) for s in range(3)]
    print(json.dumps({"real_floor": floors}), flush=True)
    rows = []
    if args.command == "curve":
        for w in args.workdirs:
            rows += [dict(r, recipe=w.name, n=args.n)
                     for r in curve(w, evaluator, ref, args.n, args.every)]
        out = args.workdirs[0]
    else:
        dataset = data.load_mnist("train", args.data_dir), data.load_mnist("test", args.data_dir)
        for name in args.recipes:
            cfg = configs.get_config("denoiser").replace(model_kwargs=RECIPES[name])
            steps = max(args.points, int(args.minutes * 60 / seconds_per_step(cfg)))
            every = -(-steps // args.points)
            cfg = cfg.replace(steps=steps, ckpt_every=every, eval_every=steps, keep=args.points + 1)
            workdir = args.root / name
            t0 = time.perf_counter()
            training.train(cfg, workdir, dataset=dataset, progress=False)
            train_s = time.perf_counter() - t0
            rows += [dict(r, recipe=name, n=args.n, kwargs=RECIPES[name], steps=steps,
                          train_seconds=train_s) for r in curve(workdir, evaluator, ref, args.n)]
        out = args.root
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps({"real_floor": floors, "rows": rows}, indent=1))
    plot(rows, floors, out / "recipes.png")


if __name__ == "__main__":
    main()
