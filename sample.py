"""Guided digits from the bundled checkpoints, and the tutorial's analysis figures.

    python sample.py                         # 8 guided samples of each digit -> out/
    python sample.py --classes 3,7 --per-class 16 --scale 4 --steps 500
    python sample.py figures                 # classifier over time, gradient maps

Writes out/grid.png, out/trajectory.gif and out/samples.npz (images float32 (N, 28, 28, 1)
in [-1, 1], labels int (N,), and the run's seed, scale, steps, sampler and library
versions (a JSON string)).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while JAX imports: status 130, no traceback.
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

from jaxguide import cli  # noqa: E402
from jaxguide.checks import check_int  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_STEPS = 50
MAX_CLASSES = 1000  # Bound on class indices before the classifier says how many it has.
MAX_STEPS = 100_000
MAX_IMAGES = 100_000
MAX_BATCH = 8192
MAX_SCALE = 1e6
MAX_SEED = 2**32 - 1  # JAX keys take 32-bit seeds: larger ones would repeat smaller ones.
FIGURE_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def parse_classes(text: str, num_classes: int | None = None) -> list[int]:
    """'0-9' or '0,3,7' (or a mix, '0-2,7') → list of ints, each in [0, num_classes).

    Bounds are checked before a range is expanded (without `num_classes`, against
    MAX_CLASSES), so a huge range fails at once instead of filling memory.
    """
    form = f"--classes: got {text!r}, accepted digits like 0,3,7 or a range like 0-9"
    hi_max = (num_classes or MAX_CLASSES) - 1
    out = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            lo, hi = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(form) from None
        if lo > hi:
            raise ValueError(form)
        if not 0 <= lo <= hi <= hi_max:
            bad = lo if not 0 <= lo <= hi_max else hi
            raise ValueError(f"--classes: got {bad}, accepted 0-{hi_max}")
        out.extend(range(lo, hi + 1))
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="sample", choices=["sample", "figures"])
    p.add_argument("--classes", default="0-9", help="digits to generate: 0,3,7 or 0-9 (figures "
                   "uses all classes)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="reverse-SDE steps")
    p.add_argument("--scale", type=float, default=32.0, help="guidance scale s >= 0 (figures "
                   "sweeps 0-32)")
    p.add_argument("--sampler", default="euler_maruyama",
                   help="euler_maruyama, predictor_corrector, heun or dpm_solver_2m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=40, help="images per jitted call (rounded "
                   "up to a multiple of --devices)")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--data-dir", help="figures: MNIST IDX folder for the test digit "
                   "(default: a generated digit)")
    p.add_argument("--no-gif", action="store_true")
    p.add_argument("--evaluate", action="store_true",
                   help="print the evaluator's accuracy and FDs of the samples")
    cli.add_device_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def check_args(args, num_classes: int | None = None) -> list[int]:
    """Validates the arguments (classes against `num_classes` when given); returns the classes.

    Called before anything is loaded or written, and again once the classifier's number of
    classes is known.
    """
    classes = parse_classes(args.classes, num_classes)
    check_int("--per-class", args.per_class, 1, MAX_IMAGES)
    if len(classes) * args.per_class > MAX_IMAGES:
        raise ValueError(f"--per-class: got {args.per_class} for {len(classes)} classes, "
                         f"{len(classes) * args.per_class} images; accepted at most {MAX_IMAGES}")
    check_int("--steps", args.steps, 1, MAX_STEPS)
    check_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    if not (math.isfinite(args.scale) and 0 <= args.scale <= MAX_SCALE):
        raise ValueError(f"--scale: got {args.scale}, accepted a finite number >= 0 "
                         f"(at most {MAX_SCALE:g})")
    check_int("--seed", args.seed, 0, MAX_SEED)
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
    from jaxguide.samplers import METHODS

    if args.sampler not in METHODS:
        raise ValueError(f"--sampler: got {args.sampler!r}, accepted {', '.join(METHODS)}")
    return classes


def load_pipeline(args):
    """The pipeline of --checkpoint-dir; its errors name the argument."""
    from jaxguide import checkpoint, pipeline

    try:
        return pipeline.load_pipeline(args.checkpoint_dir)
    except checkpoint.CheckpointError as e:
        msg = str(e)
        if msg.startswith("--checkpoint-dir"):
            raise
        raise checkpoint.CheckpointError(f"--checkpoint-dir: {msg}") from e


def generate_all(pipe, labels, scale, args, mesh, record_every=None, desc="sampling"):
    """Guided samples for `labels` (N,) in jitted chunks of --batch-size (rounded up to a
    multiple of the mesh's devices), with a progress bar.

    Returns images (N, 28, 28, 1) and, with `record_every`, frames (F, N, 28, 28, 1).
    """
    import jax
    import numpy as np
    from tqdm.auto import tqdm

    from jaxguide import parallel, pipeline

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
            res = pipeline.generate(key, pipe, labels[pad], scale, n_steps=args.steps,
                                    method=args.sampler, indices=pad, record_every=record_every,
                                    mesh=mesh)
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


@contextlib.contextmanager
def writing_to(out: Path):
    """Yields `stage(name)`: the hidden temporary path to write `out/name` to. The files move
    into place together when the block ends, none if it fails or is interrupted (no half-written
    or mixed outputs); a failed write (a folder in a file's place, a full disk) becomes one
    error naming the file."""
    staged = {}

    def stage(name: str) -> Path:
        stem, _, ext = name.rpartition(".")
        staged[out / name] = out / f".{stem}.partial.{ext}"  # Keeps the format's extension.
        return staged[out / name]

    try:
        yield stage
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except OSError as e:
        finals = {str(tmp): path for path, tmp in staged.items()}
        name = e.filename2 or finals.get(str(e.filename), e.filename) or "a file"
        raise ValueError(f"--out {out}: cannot write {name} ({e.strerror or e})") from e
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def run_sample(args, mesh):
    import jax
    import numpy as np

    from jaxguide import checkpoint, metrics, viz

    check_args(args)
    pipe = load_pipeline(args)
    classes = check_args(args, pipe.num_classes)
    evaluator = load_evaluator(args, required=True) if args.evaluate else None
    reference = evaluator.reference(classes) if evaluator else None  # Read before sampling.
    out = checkpoint.ensure_writable_dir(args.out, "--out")
    labels = np.repeat(np.asarray(classes, np.int32), args.per_class)
    record_every = None if args.no_gif else max(1, args.steps // 20)
    images, frames = generate_all(pipe, labels, args.scale, args, mesh, record_every)
    if jax.process_index() > 0:  # Every process holds all images; process 0 writes them.
        return
    meta = {"seed": args.seed, "scale": args.scale, "steps": args.steps, "sampler": args.sampler,
            "versions": checkpoint.versions()}
    ncol = min(args.per_class, 16)
    title = f"guided samples, scale {args.scale:g}, {args.steps} {args.sampler} steps"
    names = ["grid.png"] + (["trajectory.gif"] if frames is not None else []) + ["samples.npz"]
    with writing_to(out) as stage:
        viz.save_grid(images, labels, stage("grid.png"), ncol=ncol, title=title)
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
        print(f"evaluator accuracy {res['accuracy']:.4f} on {res['n']} samples; FD {res['fd']:.2f}, "
              f"class-FD {res['class_fd']:.2f} (few samples per class inflate FDs)", file=console)


def run_figures(args, mesh):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxguide import checkpoint, data, guidance, metrics, viz

    check_args(args)
    pipe = load_pipeline(args)
    check_args(args, pipe.num_classes)
    evaluator = load_evaluator(args)  # Its errors before any figure.
    out = checkpoint.ensure_writable_dir(args.out, "--out")
    key = jax.random.key(args.seed)
    if args.data_dir:
        try:
            x_test, y_test = data.load_mnist("test", args.data_dir)
        except data.DataError as e:
            raise data.DataError(f"--data-dir: {e}") from e
        x0, y = jnp.asarray(x_test[:1]), int(y_test[0])
    else:
        y = 7
        x0 = jnp.asarray(generate_all(pipe, np.array([y]), 8.0, args, mesh, desc="test digit")[0][:1])
    ts = jnp.linspace(0.0, 1.0, 16) ** 2 * pipe.sde.T
    x_ts, _ = pipe.sde.marginal(jax.random.fold_in(key, 1), jnp.repeat(x0, len(ts), 0), ts)
    probs = np.exp(np.asarray(pipe.log_prob_fn(x_ts, ts)))
    targets = [y, (y + 1) % pipe.num_classes]
    grads = jnp.stack([guidance.classifier_grad(pipe.log_prob_fn, jnp.full(len(ts), c))(x_ts, ts)
                       for c in targets])
    with writing_to(out) as stage:
        viz.plot_classifier_over_time(ts, x_ts, probs, stage("classifier_over_time.png"), y)
        viz.plot_gradient_maps(ts, x_ts, grads, stage("gradient_maps.png"), targets)
    paths = [out / "classifier_over_time.png", out / "gradient_maps.png"]
    if evaluator is not None:
        labels = np.repeat(np.arange(pipe.num_classes, dtype=np.int32), args.per_class)
        accs = [metrics.guided_accuracy(evaluator(generate_all(pipe, labels, s, args, mesh,
                                                               desc=f"scale {s:g}")[0]).predictions,
                                        labels)[0] for s in FIGURE_SCALES]
        with writing_to(out) as stage:
            viz.plot_accuracy_vs_scale(FIGURE_SCALES, accs, stage("accuracy_vs_scale.png"),
                                       f"{len(labels)} samples, {args.steps} {args.sampler} steps")
        paths.append(out / "accuracy_vs_scale.png")
    console = cli.Console(sys.stdout)
    for p in paths:
        print(p, file=console)


def main(argv):
    args = parse_args(argv)
    mesh = cli.init_devices(args)
    (run_figures if args.command == "figures" else run_sample)(args, mesh)


if __name__ == "__main__":
    cli.exit_with(main)
