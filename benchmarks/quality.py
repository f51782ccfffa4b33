"""Sample quality of the bundled models: guidance scale and step-count sweeps per sampler.

    python benchmarks/quality.py --data-dir ../shared/data/mnist          # full sweep
    python benchmarks/quality.py --data-dir ../shared/data/mnist --quick  # a smoke run
    python benchmarks/quality.py --points '[{"guidance": "free", "scale": 0.5, "seed": 1}]'
    python benchmarks/quality.py --checkpoint-dir checkpoints/fashion_mnist \
        --data-dir ../shared/data/fashion_mnist --points '[{"guidance": "free", "scale": 0.75}]'

For each point: accuracy of the independent evaluator on the requested labels, Fréchet
distance (FD) to the test set in evaluator features, class-conditional FD (mean over digits),
NFE and wall seconds (compilation included). Every point uses the same seed, hence the same
initial noise per image. Also the real-data floor (with --data-dir): the same metrics for N
training images of the checkpoints' dataset, N / K per class.
Writes <out>/quality.json and <out>/quality.png (accuracy against class-FD per sampler).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxguide import data, metrics, pipeline  # noqa: E402
from jaxguide.samplers import DEFAULT_GRID, NFE_PER_STEP  # noqa: E402

SCALES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
STEPS = {"euler_maruyama": (50, 100, 250, 1000), "predictor_corrector": (25, 50, 125),
         "heun": (10, 25, 50), "dpm_solver_2m": (10, 25, 50)}


def run_point(pipe, evaluator, ref, *, method, steps, scale, n, batch, seed,
              guidance="classifier", classifier_scale=None, interval=None, grid=None):
    labels = np.arange(n, dtype=np.int32) % pipe.num_classes
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    images = []
    for lo in range(0, n, batch):
        idx = np.arange(lo, lo + batch)
        images.append(np.asarray(pipeline.generate(key, pipe, labels[idx], scale, n_steps=steps,
                                                   method=method, indices=idx,
                                                   guidance=guidance, interval=interval,
                                                   classifier_scale=classifier_scale, grid=grid)))
    seconds = time.perf_counter() - t0
    res = metrics.evaluate_samples(evaluator, np.concatenate(images), labels, ref)
    nfe = pipeline.network_evaluations(pipe, scale, guidance=guidance, interval=interval,
                                       n_steps=steps, method=method, grid=grid)
    return {"method": method, "grid": grid or DEFAULT_GRID[method], "guidance": guidance,
            "steps": steps, **nfe, "scale": scale,
            "classifier_scale": classifier_scale, "interval": interval, "seconds": seconds, **res}


def floor(evaluator, ref, train_images, train_labels, n, seed):
    """The metrics of n real training images, n / K of each class (as the samples)."""
    rng = np.random.default_rng(seed)
    k = int(train_labels.max()) + 1
    idx = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), n // k, replace=False)
                          for c in range(k)])
    res = metrics.evaluate_samples(evaluator, train_images[idx], train_labels[idx], ref)
    return {"method": "real training images", "steps": 0, "nfe": 0, "scale": None, "seconds": 0.0, **res}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in STEPS:
        pts = sorted((r["class_fd"], r["accuracy"], r["nfe"]) for r in rows
                     if r["method"] == method and r.get("sweep") == "steps")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
            for fd, acc, nfe in pts:
                ax.annotate(str(nfe), (fd, acc), fontsize=6)
    scale_pts = [(r["class_fd"], r["accuracy"], r["scale"]) for r in rows if r.get("sweep") == "scale"]
    if scale_pts:
        ax.plot([p[0] for p in scale_pts], [p[1] for p in scale_pts], "k--", marker="s", ms=3,
                label="scale sweep")
        for fd, acc, s in scale_pts:
            ax.annotate(f"s={s:g}", (fd, acc), fontsize=6)
    ax.set(xlabel="class-conditional FD (lower is better)", ylabel="evaluator accuracy",
           title="guided samples: accuracy vs class-FD (labels: NFE)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="the dataset's IDX files (for the real-data floor)")
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--n", type=int, default=1000, help="samples per point")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=16.0, help="scale of the step sweeps")
    p.add_argument("--scale-method", default="dpm_solver_2m")
    p.add_argument("--scale-steps", type=int, default=50)
    p.add_argument("--max-nfe", type=int, help="skip step-sweep points above this NFE")
    p.add_argument("--methods", default=",".join(STEPS))
    p.add_argument("--repeat-seeds", type=int, default=3,
                   help="run the default point with this many seeds (FD spread)")
    p.add_argument("--quick", action="store_true", help="few points, few samples")
    p.add_argument("--points", help="instead of the sweeps, these points: a JSON list of objects "
                   "with guidance, scale and optionally classifier_scale (guidance both), "
                   "interval, method, steps, seed; one JSON line each (worst digit included)")
    args = p.parse_args()
    if args.quick:
        args.n, args.batch = 100, 50
    if args.n % args.batch:
        p.error("--n must be a multiple of --batch")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = pipeline.load_pipeline(args.checkpoint_dir)
    evaluator = metrics.Evaluator(Path(args.checkpoint_dir) / "evaluator")
    ref = evaluator.reference()
    rows = []
    if args.data_dir:
        train = data.load_dataset(pipe.dataset.name, "train", args.data_dir)
        rows.append({**floor(evaluator, ref, *train, args.n, args.seed), "sweep": "floor"})
        _print(rows[-1])
    if args.points:
        return run_points(pipe, evaluator, ref, json.loads(args.points), args)
    scales = (0.0, 8.0) if args.quick else SCALES
    for s in scales:
        rows.append({**run_point(pipe, evaluator, ref, method=args.scale_method, steps=args.scale_steps,
                                 scale=s, n=args.n, batch=args.batch, seed=args.seed), "sweep": "scale"})
        _print(rows[-1])
    for seed in range(args.seed + 1, args.seed + args.repeat_seeds):
        # The same point with other seeds: how much FD moves between seeds at this N.
        rows.append({**run_point(pipe, evaluator, ref, method=args.scale_method, steps=args.scale_steps,
                                 scale=args.scale, n=args.n, batch=args.batch, seed=seed),
                     "sweep": "seed", "seed": seed})
        _print(rows[-1])
    for method in args.methods.split(","):
        for steps in STEPS[method][:1] if args.quick else STEPS[method]:
            if args.max_nfe and steps * NFE_PER_STEP[method] > args.max_nfe:
                continue
            rows.append({**run_point(pipe, evaluator, ref, method=method, steps=steps, scale=args.scale,
                                     n=args.n, batch=args.batch, seed=args.seed), "sweep": "steps"})
            _print(rows[-1])
    (out / "quality.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=1))
    plot(rows, out / "quality.png")
    print(f"wrote {out / 'quality.json'} and {out / 'quality.png'}")


def run_points(pipe, evaluator, ref, points, args):
    for point in points:
        r = run_point(pipe, evaluator, ref, method=point.get("method", "euler_maruyama"),
                      steps=point.get("steps", pipeline.DEFAULT_STEPS), scale=point["scale"],
                      n=args.n, batch=args.batch, seed=point.get("seed", args.seed),
                      guidance=point["guidance"], interval=point.get("interval"),
                      classifier_scale=point.get("classifier_scale"), grid=point.get("grid"))
        worst = min(r.pop("per_class_accuracy").values())
        print(json.dumps({**point, **r, "worst_digit": worst}), flush=True)


def _print(r):
    scale = "-" if r["scale"] is None else f"{r['scale']:g}"
    print(f"{r['sweep']:5s} {r['method']:20s} steps={r['steps']:5d} nfe={r['nfe']:5d} scale={scale:>4s} "
          f"acc={r['accuracy']:.4f} fd={r['fd']:8.3f} class_fd={r['class_fd']:8.3f} "
          f"sec={r['seconds']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
