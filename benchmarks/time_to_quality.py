"""Time to quality: the fewest network evaluations (NFE) at which each sampler matches
1000-step Euler–Maruyama, with the bundled models at sample.py's guidance scale.

    python benchmarks/time_to_quality.py --n 200            # about 13 min on 2 CPU cores

"Matches" means evaluator accuracy within 0.5 points of the reference and class-FD no worse.
All points share the seed (the same initial noise per image). Each sampler climbs the NFE
ladder until it matches (or the ladder ends). Writes <out>/time_to_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import _print, run_point  # noqa: E402

from jaxguide import metrics, pipeline  # noqa: E402
from jaxguide.samplers import METHODS, NFE_PER_STEP  # noqa: E402

LADDER = (10, 20, 30, 50, 100, 200)


def matches(row, ref, tolerance):
    return row["accuracy"] >= ref["accuracy"] - tolerance and row["class_fd"] <= ref["class_fd"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--n", type=int, default=200, help="samples per point")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--scale", type=float, default=32.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--tolerance", type=float, default=0.005, help="accuracy tolerance")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args()
    pipe = pipeline.load_pipeline(args.checkpoint_dir)
    evaluator = metrics.Evaluator(Path(args.checkpoint_dir) / "evaluator")
    ref_stats = evaluator.reference()
    point = dict(scale=args.scale, n=args.n, batch=args.batch, seed=args.seed)
    ref = {**run_point(pipe, evaluator, ref_stats, method="euler_maruyama",
                       steps=args.reference_steps, **point), "sweep": "ref"}
    _print(ref)
    rows, best = [ref], {}
    for method in args.methods.split(","):
        for nfe in LADDER:
            steps = nfe // NFE_PER_STEP[method]
            row = {**run_point(pipe, evaluator, ref_stats, method=method, steps=steps, **point),
                   "sweep": "ladder"}
            row["matches"] = matches(row, ref, args.tolerance)
            rows.append(row)
            _print(row)
            if row["matches"]:
                best[method] = row
                break
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_quality.json").write_text(json.dumps(
        {**vars(args), "reference": ref, "best": best, "rows": rows}, indent=1))
    print(f"\nreference: {args.reference_steps}-step euler_maruyama, accuracy "
          f"{ref['accuracy']:.4f}, class-FD {ref['class_fd']:.2f}, {ref['seconds']:.0f} s")
    print(f"{'sampler':20s} {'NFE':>5s} {'accuracy':>8s} {'class-FD':>8s} {'seconds':>7s} {'speed-up':>8s}")
    for method in args.methods.split(","):
        r = best.get(method)
        if r is None:
            print(f"{method:20s} no match up to NFE {LADDER[-1]}")
            continue
        print(f"{method:20s} {r['nfe']:5d} {r['accuracy']:8.4f} {r['class_fd']:8.2f} "
              f"{r['seconds']:7.1f} {ref['nfe'] / r['nfe']:7.0f}x")


if __name__ == "__main__":
    main()
