"""Classifier guidance against classifier-free guidance, side by side.

    python benchmarks/guidance_compare.py --data-dir ../shared/data/mnist

The same checkpoints (a class-conditional denoiser whose null class is the unconditional
model, and the noisy classifier), the same sampler, steps and seed; N images, N / 10 per
digit. For each guidance weight: the evaluator's accuracy, FD and class-FD, beside the
real-data floor (N training digits, as many per digit). Also the training compute behind each
method, read from the checkpoints' metadata. Writes <out>/guidance_compare.json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from jaxguide import data, metrics, pipeline, training  # noqa: E402
from quality import floor, run_point  # noqa: E402


def plot(rows, floor_row, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for guidance in ("classifier", "free"):
        pts = [r for r in rows if r["guidance"] == guidance]
        ax.plot([r["class_fd"] for r in pts], [100 * r["accuracy"] for r in pts], "o-",
                label={"classifier": "classifier guidance (s)",
                       "free": "classifier-free (w)"}[guidance])
        for r in pts:
            ax.annotate(f"{r['scale']:g}", (r["class_fd"], 100 * r["accuracy"]), fontsize=7)
    ax.axvline(floor_row["class_fd"], color="grey", ls="--", lw=0.8, label="real digits")
    ax.set(xlabel="class-FD (lower is better)", ylabel="evaluator accuracy (%)",
           title=f"guidance compared, N = {rows[0]['n']}, {rows[0]['steps']} "
                 f"{rows[0]['method']} steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="MNIST IDX files (the real-data floor)")
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=pipeline.DEFAULT_STEPS)
    p.add_argument("--method", default="euler_maruyama")
    p.add_argument("--classifier-scales", default="1,2,4,8")  # The published table's.
    p.add_argument("--free-scales", default="0,0.35,0.5,0.75,1")
    args = p.parse_args()

    pipe = pipeline.load_pipeline(args.checkpoint_dir)
    evaluator = metrics.Evaluator(Path(args.checkpoint_dir) / "evaluator")
    ref = evaluator.reference()
    floor_row = floor(evaluator, ref, *data.load_mnist("train", args.data_dir), args.n, args.seed)
    print(json.dumps({k: floor_row[k] for k in ("accuracy", "fd", "class_fd")}), flush=True)
    rows = []
    for guidance, scales in (("classifier", args.classifier_scales), ("free", args.free_scales)):
        for scale in map(float, scales.split(",")):
            row = run_point(pipe, evaluator, ref, method=args.method, steps=args.steps,
                            scale=scale, n=args.n, batch=args.batch, seed=args.seed,
                            guidance=guidance)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("guidance", "scale", "nfe", "accuracy", "fd",
                                                  "class_fd", "seconds")}), flush=True)
    den, cls = pipe.metadata["denoiser"], pipe.metadata["classifier"]
    compute = {"denoiser_images": training.trained_images(den),
               "classifier_images": training.trained_images(cls),
               "classifier_guidance_needs": "denoiser + classifier",
               "classifier_free_needs": "denoiser (trained with label dropout)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guidance_compare.json").write_text(json.dumps(
        {"n": args.n, "seed": args.seed, "floor": floor_row, "training": compute, "rows": rows},
        indent=1, default=str))
    plot(rows, floor_row, out / "guidance_compare.png")
    print(f"wrote {out / 'guidance_compare.json'} and {out / 'guidance_compare.png'}")


if __name__ == "__main__":
    main()
