"""Guided digits from the bundled checkpoints, and the tutorial's analysis figures.

    python sample.py                         # 8 guided samples of each digit -> out/
    python sample.py --classes 3,7 --per-class 16 --scale 4 --steps 500
    python sample.py figures                 # classifier over time, gradient maps

Writes out/grid.png, out/trajectory.gif and out/samples.npz (images float32 (N, 28, 28, 1)
in [-1, 1], labels int (N,), and the run's seed, scale, steps, sampler, grid and library
versions (a JSON string)); `figures` writes out/classifier_over_time.png,
out/gradient_maps.png and, with an evaluator beside the checkpoints, out/accuracy_vs_scale.png.

Each command's outputs in --out are one run's: they are replaced together, and one this run
does not write (trajectory.gif with --no-gif) is removed. A file of an output's name that
sample.py did not write (not a PNG or GIF image, not a samples.npz of sample.py) is never
replaced or removed: the run refuses before sampling. A --out folder the run created is
removed again if the run fails before writing into it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

# Ctrl-C while JAX imports: status 130, no traceback. Before the library is imported, its
# one signal mechanism (runtime.Signals, from cli.exit_with on) cannot be: the process just
# ends (a KeyboardInterrupt would not do: JAX's import can swallow it and go on).
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

from jaxguide import cli, pipeline, runtime  # noqa: E402
from jaxguide.checks import SEED_MAX, check_int  # noqa: E402
from jaxguide.data import DATASETS  # noqa: E402
from jaxguide.pipeline import (DEFAULT_SAMPLING, DEFAULT_SCALES, DEFAULT_STEPS,  # noqa: E402
                               GUIDANCE)
from jaxguide.samplers import DEFAULT_GRID, GRIDS, METHODS  # noqa: E402

ROOT = Path(__file__).resolve().parent
# --guidance defaults to "free" for a class-conditional denoiser, else "classifier". With
# "both", --scale is w and --classifier-scale is s.
MAX_CLASSES = 1000  # Bound on class indices before the classifier says how many it has.
MAX_STEPS = 100_000
MAX_IMAGES = 100_000
MAX_BATCH = 8192
MAX_SCALE = 1e6
FIGURE_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# Flags of the sampling command that `figures` does not use: refused there when given.
SAMPLE_ONLY = ("--classes", "--scale", "--no-gif", "--guidance", "--classifier-scale",
               "--interval")
# Flags `figures` uses only for its accuracy sweep (with an evaluator) and, --per-class aside,
# for the digit it generates (without --data-dir): refused where neither runs.
SWEEP_FLAGS = ("--per-class", "--steps", "--sampler", "--grid", "--batch-size")
_CLASS_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")  # ASCII digits only.


def parse_class_ranges(text: str) -> list[tuple[int | str, int | str]]:
    """'0-9' or '0,3,7' (or a mix, '0-2,7') → [(lo, hi), ...] with lo <= hi; checks the form
    only (ASCII digits, spaces around the parts allowed), expands nothing. A number of more
    than 18 digits stays a string of digits (no class count is that large)."""
    form = f"--classes: got {text!r}, accepted digits like 0,3,7 or a range like 0-9"
    ranges = []
    for part in text.split(","):
        m = _CLASS_PART.fullmatch(part)
        if not m:
            raise ValueError(form)
        lo, hi = (d.lstrip("0") or "0" for d in (m[1], m[2] or m[1]))
        if (len(lo), lo) > (len(hi), hi):
            raise ValueError(form)
        # More digits than any class count: kept as digits for the message, not converted.
        lo, hi = (int(d) if len(d) <= 18 else d for d in (lo, hi))
        ranges.append((lo, hi))
    return ranges


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """'0-9' or '0,3,7' (or a mix, '0-2,7') → list of ints, each in [0, num_classes); None
    means all classes.

    Bounds are checked before a range is expanded, so a huge range fails at once instead of
    filling memory.
    """
    if text is None:
        return list(range(num_classes))
    out = []
    for lo, hi in parse_class_ranges(text):
        for end in (lo, hi):
            if not (isinstance(end, int) and end < num_classes):
                shown = end if isinstance(end, int) else f"{end[:12]}... ({len(end)} digits)"
                raise ValueError(f"--classes: got {shown}, accepted 0-{num_classes - 1} "
                                 "(the classifier's classes)")
        out.extend(range(lo, hi + 1))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every default is shown in --help: "(default: %(default)s)", or in words where it is
    # None (decided later).
    p.add_argument("command", nargs="?", default="sample", choices=["sample", "figures"],
                   help="sample: guided samples; figures: the analysis figures "
                   "(default: %(default)s)")
    p.add_argument("--classes", help="digits to generate: 0,3,7 or 0-9 (default: all the "
                   "classifier's classes; not used by figures, which uses all)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class (default: "
                   "%(default)s; figures: in its accuracy-vs-scale sweep, with an evaluator)")
    p.add_argument("--steps", type=int, help="reverse-SDE steps (default: the --sampler "
                   f"default's for the guidance, else {DEFAULT_STEPS})")
    p.add_argument("--guidance", choices=GUIDANCE, help="classifier: the unconditional score "
                   "plus s * grad log q(y|x,t); free: classifier-free guidance of a conditional "
                   "denoiser with weight w; both: the two together (default: free when the "
                   "denoiser is class-conditional, else classifier)")
    p.add_argument("--scale", type=float, help="the chosen guidance's weight >= 0: s for "
                   "classifier, w for free and both (default: "
                   + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SCALES.items())
                   + ", or the denoiser's tuned weights; not used by figures, which sweeps "
                   "classifier scales 0-32)")
    p.add_argument("--classifier-scale", type=float, help="with --guidance both: the classifier "
                   f"scale s (default: {DEFAULT_SCALES['classifier']:g})")
    p.add_argument("--interval", type=float, nargs=2, metavar=("T_LO", "T_HI"),
                   help="guide only for T_LO <= t <= T_HI, 0 <= T_LO <= T_HI (default: every t)")
    p.add_argument("--sampler", help=", ".join(METHODS) + " (default, with its steps and grid: "
                   + "; ".join(f"{k} guidance {m}, {n} steps, {g}"
                               for k, (m, n, g) in DEFAULT_SAMPLING.items())
                   + "; or the denoiser's tuned sampling)")
    p.add_argument("--grid", choices=GRIDS, help="the time grid: uniform in t, quadratic "
                   "(denser near t = 0) or uniform in log-SNR (default: the sampler's, "
                   + ", ".join(f"{m} {g}" for m, g in DEFAULT_GRID.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise "
                   "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=40, help="images per jitted call, rounded "
                   "up to a multiple of --devices (default: %(default)s)")
    p.add_argument("--out", default="out", help="output folder (default: %(default)s)")
    p.add_argument("--dataset", choices=list(DATASETS), help="whose bundled checkpoints to "
                   "use: checkpoints/ for mnist, checkpoints/<dataset>/ for the others "
                   "(default: mnist, or what --checkpoint-dir holds)")
    p.add_argument("--checkpoint-dir", help="folder holding denoiser/, classifier/ and "
                   "optionally evaluator/ (default: --dataset's bundled checkpoints)")
    p.add_argument("--data-dir", help="figures: the dataset's IDX folder for a test image "
                   "(default: a generated one)")
    p.add_argument("--no-gif", action="store_true", help="write no trajectory.gif (and remove "
                   "the one an earlier run left in --out)")
    p.add_argument("--evaluate", action="store_true",
                   help="print the evaluator's accuracy and FDs of the samples")
    cli.add_device_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = cli.parse_args(p, argv)
    args.given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}  # No abbreviations.
    if args.command == "figures":
        for flag in SAMPLE_ONLY:
            if flag in args.given:
                raise ValueError(f"{flag}: not used by 'figures' (accepted by the sampling "
                                 "command)")
    return args


def set_guidance(args, conditional: bool, scales=DEFAULT_SCALES,
                 sampling=DEFAULT_SAMPLING) -> None:
    """Fills in --guidance, --scale, --classifier-scale, --sampler, --steps and --grid
    defaults once the denoiser is known (`scales` and `sampling`: its tuned ones,
    `Pipeline.default_scales` and `Pipeline.default_sampling`)."""
    if args.guidance is None:
        args.guidance = "free" if conditional else "classifier"
    if args.guidance != "classifier" and not conditional:
        raise ValueError(f"--guidance: got {args.guidance!r}, which needs a class-conditional "
                         "denoiser; the one in --checkpoint-dir is unconditional (accepted "
                         "classifier)")
    if args.classifier_scale is not None and args.guidance != "both":
        raise ValueError("--classifier-scale: used only with --guidance both")
    if args.scale is None:
        args.scale = scales["classifier" if args.guidance == "classifier" else "free"]
    if args.guidance == "both" and args.classifier_scale is None:
        args.classifier_scale = scales["classifier"]
    args.sampler, args.steps, args.grid = pipeline.sampling(args.guidance, args.sampler,
                                                            args.steps, args.grid, sampling)


def check_args(args, num_classes: int | None = None) -> list[int]:
    """Validates the arguments (classes against `num_classes` when given); returns the classes
    (None without `num_classes`).

    Called before anything is loaded or written, and again once the classifier's number of
    classes is known: only then are classes checked against the range they must lie in.
    """
    if args.checkpoint_dir is None:  # The bundled checkpoints of --dataset.
        args.checkpoint_dir = str(ROOT / "checkpoints" / (
            "" if args.dataset in (None, "mnist") else args.dataset))
        if not Path(args.checkpoint_dir).is_dir():
            raise ValueError(f"--dataset: got {args.dataset}, which has no bundled checkpoints "
                             f"({args.checkpoint_dir}); accepted one with, or --checkpoint-dir "
                             f"with models trained by train.py --dataset {args.dataset}")
    if num_classes is None:
        ranges = parse_class_ranges(args.classes) if args.classes is not None else []
        classes = None
        # Images counted now unless a class is implausible (the second call refuses it).
        n_classes = (sum(hi - lo + 1 for lo, hi in ranges)
                     if args.classes is not None and all(isinstance(hi, int) and hi < MAX_CLASSES
                                                         for _, hi in ranges) else None)
    else:
        classes = parse_classes(args.classes, num_classes)
        n_classes = len(classes)
    check_int("--per-class", args.per_class, 1, MAX_IMAGES)
    if n_classes is not None and n_classes * args.per_class > MAX_IMAGES:
        raise ValueError(f"--per-class: got {args.per_class} for {n_classes} classes, "
                         f"{n_classes * args.per_class} images; accepted at most {MAX_IMAGES}")
    if args.steps is not None:
        check_int("--steps", args.steps, 1, MAX_STEPS)
    check_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    for flag, value in (("--scale", args.scale), ("--classifier-scale", args.classifier_scale)):
        if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_SCALE):
            raise ValueError(f"{flag}: got {value}, accepted a finite number >= 0 "
                             f"(at most {MAX_SCALE:g})")
    check_int("--seed", args.seed, 0, SEED_MAX)
    if args.interval is not None and not (all(map(math.isfinite, args.interval))
                                          and 0 <= args.interval[0] <= args.interval[1]):
        raise ValueError(f"--interval: got {' '.join(map(str, args.interval))}, accepted "
                         "T_LO T_HI with 0 <= T_LO <= T_HI")
    if args.command == "figures" and args.evaluate:
        raise ValueError("--evaluate: used only by `sample.py sample`; figures evaluates its "
                         "accuracy-against-scale sweep whenever an evaluator is present")
    if args.evaluate and args.per_class < 2:
        raise ValueError(f"--per-class: got {args.per_class}; --evaluate needs >= 2 samples "
                         "per class (class-wise Fréchet distances)")
    if args.command == "sample" and args.data_dir is not None:
        raise ValueError("--data-dir: used only by `sample.py figures` (its test digit)")
    for name in ("out", "checkpoint_dir", "data_dir"):
        cli.check_path("--" + name.replace("_", "-"), getattr(args, name))
    if Path(args.checkpoint_dir).is_file():
        raise ValueError(f"--checkpoint-dir {args.checkpoint_dir}: is a file, accepted a "
                         "folder holding denoiser/ and classifier/")
    if args.sampler is not None and args.sampler not in METHODS:
        raise ValueError(f"--sampler: got {args.sampler!r}, accepted {', '.join(METHODS)}")
    return classes


def load_pipeline(args):
    """The pipeline of --checkpoint-dir; its errors name the argument."""
    from jaxguide import checkpoint

    try:
        pipe = pipeline.load_pipeline(args.checkpoint_dir)
    except checkpoint.CheckpointError as e:
        raise cli.as_flag_error(e, ("checkpoint_dir",), "--checkpoint-dir") from e
    if args.dataset not in (None, pipe.dataset.name):
        raise ValueError(f"--dataset: got {args.dataset}, but --checkpoint-dir "
                         f"{args.checkpoint_dir} holds models of {pipe.dataset.name}")
    return pipe


def generate_all(pipe, labels, scale, args, mesh, record_every=None, desc="sampling",
                 guidance="classifier", classifier_scale=None, interval=None):
    """Guided samples for `labels` (N,) in jitted chunks of --batch-size (rounded up to a
    multiple of the mesh's devices), with a progress bar.

    Returns images (N, 28, 28, 1) and, with `record_every`, frames (F, N, 28, 28, 1).
    """
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jaxguide import parallel

    key = jax.random.key(args.seed)
    n = len(labels)
    batch = -(-min(args.batch_size, n) // mesh.size) * mesh.size
    images, frames = [], []
    with tqdm(total=n, desc=f"{desc} ({args.steps} {args.sampler} steps)", unit="img",
              disable=jax.process_index() > 0, file=cli.Console(sys.stderr),
              dynamic_ncols=True) as bar:
        for lo in range(0, n, batch):
            idx = np.arange(lo, min(lo + batch, n))
            # Pad the last chunk to the batch size: one compiled shape for every call.
            pad = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
            res = pipeline.generate(key, pipe, labels[pad], scale, guidance=guidance,
                                    classifier_scale=classifier_scale, interval=interval,
                                    n_steps=args.steps, method=args.sampler, grid=args.grid,
                                    indices=pad, record_every=record_every, mesh=mesh)
            x, traj = res if record_every else (res, None)
            images.append(parallel.to_host(x)[:len(idx)])
            if traj is not None:
                frames.append(parallel.to_host(traj)[:, :len(idx)])
            bar.update(len(idx))
    images = np.concatenate(images)
    bad = int(np.sum(~np.isfinite(images).all(axis=(1, 2, 3))))
    if bad:
        raise RuntimeError(f"sampling produced non-finite values in {bad} of {n} images; "
                           "nothing written (try a lower --scale or more --steps)")
    return images, (np.concatenate(frames, axis=1) if frames else None)


def load_evaluator(args, required: bool = False):
    """The evaluator beside the checkpoints, or None when there is none (an error if
    `required`)."""
    from jaxguide import checkpoint, metrics

    path = Path(args.checkpoint_dir) / "evaluator"
    if not path.is_dir():
        if required:
            raise ValueError(f"--evaluate: no evaluator/ in --checkpoint-dir {args.checkpoint_dir}")
        return None
    try:
        return metrics.Evaluator(path)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"--checkpoint-dir: {e}") from e


# Each command's outputs: name -> (what it is, whether a file of that name is one).
SAMPLES_ARRAYS = ("images", "labels", "seed", "versions")  # Those samples.npz always holds.
SAMPLE_OUTPUTS = {
    "grid.png": ("sample.py's PNG image", runtime.made_here),
    "trajectory.gif": ("sample.py's GIF image", runtime.made_here),
    "samples.npz": ("sample.py's npz of arrays",
                    functools.partial(runtime.npz_holds, arrays=SAMPLES_ARRAYS)),
}
FIGURE_OUTPUTS = {name: SAMPLE_OUTPUTS["grid.png"] for name in
                  ("classifier_over_time.png", "gradient_maps.png", "accuracy_vs_scale.png")}


def run_sample(args, mesh):
    import jax
    import numpy as np

    from jaxguide import checkpoint, metrics, viz

    check_args(args)
    pipe = load_pipeline(args)
    classes = check_args(args, pipe.num_classes)
    set_guidance(args, pipe.conditional, pipe.default_scales, pipe.default_sampling)
    evaluator = load_evaluator(args, required=True) if args.evaluate else None
    reference = evaluator.reference(classes) if evaluator else None  # Read before sampling.
    names = ["grid.png"] + ([] if args.no_gif else ["trajectory.gif"]) + ["samples.npz"]
    runtime.check_outputs(Path(args.out), SAMPLE_OUTPUTS, names, "--out")
    with runtime.output_folder(args.out, "--out", "sample.py run") as out:
        labels = np.repeat(np.asarray(classes, np.int32), args.per_class)
        record_every = None if args.no_gif else max(1, args.steps // 20)
        images, frames = generate_all(pipe, labels, args.scale, args, mesh, record_every,
                                      guidance=args.guidance,
                                      classifier_scale=args.classifier_scale,
                                      interval=args.interval)
        if jax.process_index() > 0:  # Every process holds all images; process 0 writes them.
            return
        meta = {"seed": args.seed, "guidance": args.guidance, "scale": args.scale,
                **({"classifier_scale": args.classifier_scale} if args.guidance == "both" else {}),
                **({"interval": args.interval} if args.interval else {}),
                "steps": args.steps, "sampler": args.sampler,
                "grid": args.grid,
                **pipeline.network_evaluations(pipe, args.scale, guidance=args.guidance,
                                               interval=args.interval, n_steps=args.steps,
                                               method=args.sampler, grid=args.grid),
                "versions": checkpoint.versions()}
        ncol = min(args.per_class, 16)
        weights = (f"w {args.scale:g}, s {args.classifier_scale:g}" if args.guidance == "both"
                   else f"{'s' if args.guidance == 'classifier' else 'w'} {args.scale:g}")
        title = (f"{args.guidance} guidance, {weights}, {args.steps} {args.sampler} steps "
                 f"({args.grid} grid)")
        with runtime.writing_to(out, "--out", [n for n in SAMPLE_OUTPUTS if n not in names],
                                prefix=".sample.") as stage:
            viz.save_grid(images, labels, stage("grid.png"), ncol=ncol, title=title,
                          class_names=pipe.dataset.class_names)
            if frames is not None:
                viz.save_gif(frames, stage("trajectory.gif"), ncol=ncol)
            np.savez(stage("samples.npz"), images=images.astype(np.float32), labels=labels,
                     **{k: np.asarray(json.dumps(v) if isinstance(v, dict) else v)
                        for k, v in meta.items()})
    console = cli.Console(sys.stdout)  # The outputs are written: a full console loses nothing.
    for name in names:
        print(out / name, file=console)
    if evaluator is not None:
        res = metrics.evaluate_samples(evaluator, images, labels, reference)
        real = " (real digits 0.009)" if pipe.dataset.name == "mnist" else ""
        print(f"evaluator accuracy {res['accuracy']:.4f} on {res['n']} samples; FD "
              f"{res['fd']:.2f}, class-FD {res['class_fd']:.2f} (few samples per class inflate "
              f"FDs); background noise {res['background_noise']:.3f}{real}", file=console)


def run_figures(args, mesh):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxguide import data, metrics, scores, viz

    check_args(args)
    pipe = load_pipeline(args)
    check_args(args, pipe.num_classes)
    # Figures guide with the classifier.
    args.sampler, args.steps, args.grid = pipeline.sampling("classifier", args.sampler,
                                                            args.steps, args.grid,
                                                            pipe.default_sampling)
    evaluator = load_evaluator(args)  # Its errors before any figure.
    x_test = None
    name = pipe.dataset.name
    if args.data_dir or name == "mnist" and os.environ.get(data.ENV_DATA_DIR):
        try:  # Read before --out is made: its errors leave nothing behind.
            x_test, y_test = data.load_dataset(name, "test", args.data_dir)
        except data.DataError as e:
            raise cli.as_flag_error(e, ("data_dir",),
                                    "--data-dir" if args.data_dir else None) from e
    unused = [] if evaluator else SWEEP_FLAGS[:1] if x_test is None else SWEEP_FLAGS
    given_unused = [flag for flag in unused if flag in args.given]
    if given_unused:
        raise ValueError(f"{given_unused[0]}: not used by 'figures' here (it runs no accuracy "
                         "sweep without an evaluator in --checkpoint-dir" + (
                             ", and the test digit comes from the data" if x_test is not None
                             else "") + ")")
    written = list(FIGURE_OUTPUTS)[:2] + (["accuracy_vs_scale.png"] if evaluator else [])
    runtime.check_outputs(Path(args.out), FIGURE_OUTPUTS, written, "--out")
    with runtime.output_folder(args.out, "--out", "sample.py run") as out:
        key = jax.random.key(args.seed)
        if x_test is not None:
            x0, y = jnp.asarray(x_test[:1]), int(y_test[0])
        else:
            y = 7
            x0 = jnp.asarray(generate_all(pipe, np.array([y]), 8.0, args, mesh,
                                          desc="test digit")[0][:1])
        ts = jnp.linspace(0.0, 1.0, 16) ** 2 * pipe.sde.T
        x_ts, _ = pipe.sde.marginal(jax.random.fold_in(key, 1), jnp.repeat(x0, len(ts), 0), ts)
        probs = np.exp(np.asarray(pipe.log_prob_fn(x_ts, ts)))
        targets = [y, (y + 1) % pipe.num_classes]
        grads = jnp.stack([scores.classifier_grad(pipe.log_prob_fn,
                                                    jnp.full(len(ts), c))(x_ts, ts)
                           for c in targets])
        accs = None
        if evaluator is not None:  # Before any figure is written: all replaced together.
            labels = np.repeat(np.arange(pipe.num_classes, dtype=np.int32), args.per_class)
            accs = [metrics.guided_accuracy(
                evaluator(generate_all(pipe, labels, s, args, mesh, desc=f"scale {s:g}")[0]
                          ).predictions, labels)[0] for s in FIGURE_SCALES]
        with runtime.writing_to(out, "--out", [n for n in FIGURE_OUTPUTS if n not in written],
                                prefix=".sample.") as stage:
            viz.plot_classifier_over_time(ts, x_ts, probs, stage("classifier_over_time.png"), y)
            viz.plot_gradient_maps(ts, x_ts, grads, stage("gradient_maps.png"), targets)
            if accs is not None:
                viz.plot_accuracy_vs_scale(FIGURE_SCALES, accs, stage("accuracy_vs_scale.png"),
                                           f"{len(labels)} samples, {args.steps} "
                                           f"{args.sampler} steps")
        paths = [out / name for name in written]
    console = cli.Console(sys.stdout)
    for p in paths:
        print(p, file=console)


def main(argv):
    args = parse_args(argv)
    mesh = cli.init_devices(args)
    (run_figures if args.command == "figures" else run_sample)(args, mesh)


if __name__ == "__main__":
    cli.exit_with(main)
