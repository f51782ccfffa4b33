"""Train the denoiser, the noisy classifier or the evaluator.

    python train.py denoiser   --workdir runs/denoiser   --data-dir ../shared/data/mnist
    python train.py classifier --workdir runs/classifier --data-dir ../shared/data/mnist
    python train.py evaluator  --workdir runs/evaluator  --data-dir ../shared/data/mnist

A run resumes from the latest checkpoint in its work dir; Ctrl-C saves one and exits.
The trained eval-mode model is written to <workdir>/model (what sample.py loads).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

# Ctrl-C while JAX imports: status 130, no traceback. Before the library is imported, its
# one signal mechanism (runtime.Signals, from cli.exit_with on) cannot be: the process just
# ends (a KeyboardInterrupt would not do: JAX's import can swallow it and go on).
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

from jaxguide import cli, configs  # noqa: E402
from jaxguide.data import DATASETS  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # --help shows every default: "(default: %(default)s)", or where it comes from.
    p.add_argument("task", choices=configs.TASKS, help="the model to train")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and the exported model")
    p.add_argument("--dataset", default="mnist",
                   help=f"what to train on: {', '.join(DATASETS)} or another tensorflow-datasets "
                   "image-classification dataset by name (default: %(default)s)")
    p.add_argument("--data-dir", help="folder with the dataset's IDX files (default for MNIST: "
                   "$JAXGUIDE_DATA_DIR; else tensorflow-datasets)")
    p.add_argument("--model", help="denoiser: unet (default) or seed (the tutorial's UNet)")
    p.add_argument("--config", default="default", choices=configs.PRESETS,
                   help="the preset of the task's settings (default: %(default)s)")
    preset = "(default: the --config preset's)"
    p.add_argument("--steps", type=int, help=f"training steps {preset}")
    p.add_argument("--epochs", type=float, help="training epochs, instead of --steps")
    p.add_argument("--batch-size", type=int, help=f"images per step {preset}")
    p.add_argument("--lr", type=float, help=f"peak learning rate {preset}")
    p.add_argument("--seed", type=int, help=f"seed of initialisation, batches and noise {preset}")
    p.add_argument("--init-from", help="a model dir (e.g. a finished run's <workdir>/model) to "
                   "start from instead of a fresh initialisation; same task, model and kwargs")
    p.add_argument("--warmup-frac", type=float,
                   help=f"fraction of the steps spent warming the learning rate up {preset}")
    p.add_argument("--label-dropout", type=float, help="denoiser: fraction of images trained "
                   f"as the null class, the unconditional model {preset}")
    p.add_argument("--ckpt-every", type=int, help=f"steps between checkpoints {preset}")
    p.add_argument("--eval-every", type=int, help=f"steps between held-out evaluations {preset}")
    p.add_argument("--keep", type=int, help=f"training checkpoints kept, the latest {preset}")
    p.add_argument("--no-progress", action="store_true", help="show no progress bar")
    cli.add_device_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return cli.parse_args(p, argv)


def main(argv):
    args = parse_args(argv)
    import math

    from jaxguide import parallel, runtime, training

    mesh = cli.init_devices(args)

    # Every argument is validated before any data is read.
    try:
        cfg = configs.get_config(args.task, args.model, args.config, args.dataset)
    except ValueError as e:
        raise cli.as_flag_error(e, ("model", "dataset")) from e
    overrides = {k: v for k, v in dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                       steps=args.steps, ckpt_every=args.ckpt_every, keep=args.keep,
                                       eval_every=args.eval_every, init_from=args.init_from,
                                       warmup_frac=args.warmup_frac,
                                       label_dropout=args.label_dropout).items() if v is not None}
    try:
        cfg = cfg.replace(**overrides)
    except ValueError as e:
        raise cli.as_flag_error(e, overrides) from e
    try:
        parallel.check_divisible("batch_size", cfg.batch_size, mesh)
    except ValueError as e:
        raise cli.as_flag_error(e, ("batch_size",)) from e
    if args.epochs is not None:
        if args.steps is not None:
            raise ValueError("--epochs: give either --steps or --epochs, not both")
        if not (math.isfinite(args.epochs) and args.epochs > 0):
            raise ValueError(f"--epochs: got {args.epochs}, accepted a finite number > 0")
    for name in ("workdir", "data_dir", "init_from"):
        cli.check_path("--" + name.replace("_", "-"), getattr(args, name))
    if cfg.init_from and not training.has_checkpoint(args.workdir):  # Else unused: resumed.
        try:
            training.check_init_from(cfg)
        except ValueError as e:  # CheckpointError included.
            raise cli.as_flag_error(e, ("init_from",), "--init-from") from e
    # training.train checks the work dir too, but only after the data is read: here first.
    with runtime.removed_if_left_empty(args.workdir):  # Nothing left if this fails early.
        workdir = runtime.ensure_writable_dir(args.workdir, "--workdir")
        training.check_workdir(workdir, cfg.task)
        cfg, dataset = _load_data(cfg, args)
        training.train(cfg, workdir, dataset=dataset, progress=not args.no_progress,
                       devices=mesh.size)
    print(f"model: {workdir}/model", file=cli.Console(sys.stdout))


def _load_data(cfg, args):
    """(cfg, the dataset's (train, test) splits): batch_size checked against the train split
    and --epochs turned into steps."""
    from jaxguide import data

    try:
        train_set = data.load_dataset(cfg.dataset, "train", args.data_dir)
        test_set = data.load_dataset(cfg.dataset, "test", args.data_dir)
    except data.DataError as e:
        raise cli.as_flag_error(e, ("data_dir",), "--data-dir" if args.data_dir else None) from e
    n = len(train_set[0])
    if cfg.batch_size > n:
        flag = "--batch-size" if args.batch_size is not None else f"--config {args.config}: batch_size"
        raise ValueError(f"{flag}: got {cfg.batch_size}, accepted at most the {n} training images")
    if args.epochs is not None:
        per_epoch = data.steps_per_epoch(n, cfg.batch_size)
        steps = args.epochs * per_epoch
        if steps > configs.INT32_MAX:
            raise ValueError(f"--epochs: got {args.epochs:g}, {steps:g} steps of {per_epoch} per "
                             f"epoch; accepted at most {configs.INT32_MAX} steps")
        cfg = cfg.replace(steps=max(1, round(steps)))
    return cfg, (train_set, test_set)


if __name__ == "__main__":
    cli.exit_with(main)
