"""Time to quality: the fewest network evaluations (NFE) at which each sampler matches
1000-step Euler–Maruyama, with the bundled models at sample.py's default guidance.

    python benchmarks/time_to_quality.py                       # N = 1000; hours on 2 cores
    python benchmarks/time_to_quality.py --spread-steps 50     # the seed spread at 50 steps

The reference is 1000-step Euler–Maruyama (seed 0). How far a metric moves between seeds at
this N (its spread: max - min over `--spread-seeds`) is measured with Euler–Maruyama at
`--spread-steps` (default: the reference's steps). Each sampler (a method and its time grid)
climbs the NFE ladder, seed 0 (the reference's initial noise), until it matches: accuracy
within `--tolerance` (0.3 points) of the reference; FD, class-FD and background noise (what
the evaluator's features barely see) no worse than the reference's by more than their
spread. NFE counts denoiser evaluations per image (a guided classifier-free step costs two).
Every point is appended to <out>/time_to_quality.jsonl as it is measured, and found there
again by a rerun (delete the file to measure afresh); the summary goes to
<out>/time_to_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import run_point  # noqa: E402

from jaxguide import metrics, pipeline  # noqa: E402
from jaxguide.samplers import NFE_PER_STEP  # noqa: E402

LADDER = (8, 10, 15, 20, 30, 50)
SAMPLERS = ("euler_maruyama:uniform", "euler_maruyama:quadratic", "dpm_solver_2m_sde:logsnr",
            "dpm_solver_3m_sde:logsnr")
METRICS = ("fd", "class_fd", "background_noise")
KEY = ("guidance", "scale", "method", "grid", "steps", "seed", "n")


def steps_for(nfe, method, guidance, scale):
    """The most steps whose NFE is at most `nfe` (0 if none)."""
    per_step = NFE_PER_STEP[method] * (2 if guidance != "classifier" and scale else 1)
    return nfe // per_step


class Points:
    """run_point, remembered in a JSON-lines file across runs."""

    def __init__(self, path, pipe, evaluator, n, batch):
        self.path, self.pipe, self.evaluator, self.n, self.batch = path, pipe, evaluator, n, batch
        self.ref_stats = evaluator.reference()
        self.rows = [json.loads(line) for line in path.open()] if path.exists() else []

    def __call__(self, *, guidance, scale, method, grid, steps, seed):
        want = dict(guidance=guidance, scale=scale, method=method, grid=grid, steps=steps,
                    seed=seed, n=self.n)
        for row in self.rows:
            if all(row.get(k) == want[k] for k in KEY):
                return row
        row = run_point(self.pipe, self.evaluator, self.ref_stats, method=method, steps=steps,
                        scale=scale, n=self.n, batch=self.batch, seed=seed, guidance=guidance,
                        grid=grid)
        row = {**row, "seed": seed, "worst_digit": min(row.pop("per_class_accuracy").values())}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        print(f"{method:18s} {grid:9s} steps={steps:5d} nfe={row['nfe']:5d} seed={seed} "
              f"acc={row['accuracy']:.4f} fd={row['fd']:7.3f} class_fd={row['class_fd']:7.3f} "
              f"noise={row['background_noise']:.4f} sec={row['seconds']:7.1f}", flush=True)
        return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--n", type=int, default=1000, help="samples per point (100 per digit)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--guidance", help="default: sample.py's (free for a conditional denoiser)")
    p.add_argument("--scale", type=float, help="default: sample.py's for the guidance")
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--spread-steps", type=int, help="default: --reference-steps")
    p.add_argument("--spread-seeds", default="0,1,2")
    p.add_argument("--tolerance", type=float, default=0.003, help="accuracy tolerance")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="method:grid, ...")
    args = p.parse_args()
    pipe = pipeline.load_pipeline(args.checkpoint_dir)
    args.guidance = args.guidance or ("free" if pipe.conditional else "classifier")
    if args.scale is None:
        args.scale = pipe.default_scales["classifier" if args.guidance == "classifier" else "free"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = metrics.Evaluator(Path(args.checkpoint_dir) / "evaluator")
    point = Points(out / "time_to_quality.jsonl", pipe, evaluator, args.n, args.batch)
    em = lambda steps, seed: point(guidance=args.guidance, scale=args.scale,
                                   method="euler_maruyama", grid="uniform", steps=steps, seed=seed)
    ref = em(args.reference_steps, 0)
    seeds = [em(args.spread_steps or args.reference_steps, int(s))
             for s in args.spread_seeds.split(",")]
    spread = {m: max(r[m] for r in seeds) - min(r[m] for r in seeds) for m in METRICS}

    def matches(row):
        return (row["accuracy"] >= ref["accuracy"] - args.tolerance
                and all(row[m] <= ref[m] + spread[m] for m in spread))

    ladders, best = {}, {}
    for sampler in args.samplers.split(","):
        method, grid = sampler.split(":")
        ladders[sampler] = []
        for nfe in LADDER:
            steps = steps_for(nfe, method, args.guidance, args.scale)
            if not steps or steps in [r["steps"] for r in ladders[sampler]]:
                continue
            row = point(guidance=args.guidance, scale=args.scale, method=method, grid=grid,
                        steps=steps, seed=0)
            ladders[sampler].append({**row, "matches": matches(row)})
            if matches(row):
                best[sampler] = row
                break
    (out / "time_to_quality.json").write_text(json.dumps(
        {**vars(args), "reference": ref, "spread": spread, "spread_rows": seeds,
         "best": best, "ladders": ladders}, indent=1))
    print(f"\nreference: {args.reference_steps}-step euler_maruyama ({args.guidance} guidance, "
          f"scale {args.scale:g}): accuracy {ref['accuracy']:.4f}, FD {ref['fd']:.2f}, class-FD "
          f"{ref['class_fd']:.2f}, background noise {ref['background_noise']:.4f}, "
          f"{ref['seconds']:.0f} s; seed spread: " + ", ".join(f"{m} {v:.4g}" for m, v in spread.items()))
    print(f"{'sampler':30s} {'NFE':>5s} {'accuracy':>8s} {'FD':>6s} {'class-FD':>8s} {'noise':>6s} "
          f"{'seconds':>7s} {'speed-up':>8s}")
    for sampler in ladders:
        r = best.get(sampler)
        if r is None:
            print(f"{sampler:30s} no match up to NFE {LADDER[-1]}")
            continue
        print(f"{sampler:30s} {r['nfe']:5d} {r['accuracy']:8.4f} {r['fd']:6.2f} {r['class_fd']:8.2f} "
              f"{r['background_noise']:6.4f} {r['seconds']:7.1f} {ref['seconds'] / r['seconds']:7.0f}x")


if __name__ == "__main__":
    main()
