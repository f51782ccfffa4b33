"""Training: a TrainState with EMA, one generic jitted train step, and a resumable loop.

Everything a step does is a pure function of (state, step): the batch is
`batch_indices(seed, step, ...)` and the key is `fold_in(key(seed), step)`, so a run resumed
from its checkpoint at step s continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxguide import checkpoint, configs, data, losses, parallel, runtime
from jaxguide.checks import check_int, invalid
from jaxguide.cli import Console
from jaxguide.compiler import jit
from jaxguide.configs import TrainConfig
from jaxguide.nets import make_model
from jaxguide.sde import VPSDE


class TrainingError(RuntimeError):
    """Training cannot start or cannot go on (diverged, unwritable work dir, bad resume)."""


@struct.dataclass
class TrainState:
    """step (), params, batch_stats ({} without BatchNorm), opt_state, ema_params."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW on a one-cycle cosine schedule (warm-up `warmup_frac`), optional clipping."""
    schedule = optax.cosine_onecycle_schedule(cfg.steps, cfg.lr, pct_start=max(cfg.warmup_frac, 1e-6))
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx


def sde_of(cfg: TrainConfig) -> VPSDE:
    return VPSDE(beta_min=cfg.beta_min, beta_max=cfg.beta_max, T=cfg.T)


def create_state(cfg: TrainConfig, model: nn.Module, tx, image_shape=None) -> TrainState:
    """A fresh TrainState from `key(seed)`, for images (H, W, C) (default: cfg.dataset's)."""
    image_shape = tuple(image_shape or data.get_dataset(cfg.dataset).image_shape)
    variables = model.init(jax.random.key(cfg.seed), jnp.zeros((1,) + image_shape),
                           jnp.zeros((1,)))
    params = variables["params"]
    return TrainState(step=jnp.array(0, jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if cfg.ema_decay else {})


def check_init_from(cfg: TrainConfig) -> dict:
    """The metadata of the model at cfg.init_from, which must be cfg's task, model and kwargs."""
    meta = checkpoint.read_model_metadata(cfg.init_from)
    saved = (meta["task"], configs.OLD_MODEL_NAMES.get(meta["model"], meta["model"]),
             meta["model_kwargs"])
    wanted = (cfg.task, cfg.model, cfg.to_dict()["model_kwargs"])
    try:  # The same model: kwargs equal up to defaults spelled out (TrainConfig.differences).
        same = saved[:2] == wanted[:2] and not cfg.replace(model_kwargs=saved[2]).differences(cfg)
    except (TypeError, ValueError):  # Kwargs this model does not take.
        same = False
    if not same:
        raise ValueError(f"init_from: {cfg.init_from} holds the {saved[0]} {saved[1]!r} with "
                         f"{saved[2]}; accepted a model of this run's: the {wanted[0]} "
                         f"{wanted[1]!r} with {wanted[2]}")
    return meta


def has_checkpoint(workdir: str | Path) -> bool:
    """Whether `workdir` holds a training checkpoint to resume from (a step folder)."""
    folder = Path(workdir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def warm_start(cfg: TrainConfig, state: TrainState) -> TrainState:
    """`state` with its parameters (and EMA, batch_stats) those of the model at cfg.init_from."""
    check_init_from(cfg)
    _, variables, _ = checkpoint.load_model(cfg.init_from, cfg.task)
    params = variables["params"]
    return state.replace(params=params, batch_stats=variables.get("batch_stats", {}),
                         ema_params=jax.tree.map(jnp.copy, params) if cfg.ema_decay else {})


def eval_variables(state: TrainState) -> dict:
    """The variables to evaluate and export: EMA parameters when kept."""
    variables = {"params": state.ema_params if state.ema_params else state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def _train_apply(model, params, batch_stats):
    """apply(x, t, key[, labels]) -> (outputs, new batch_stats) in train mode."""

    def apply(x, t, key, *labels):
        variables = {"params": params}
        if not batch_stats:
            return (model.apply(variables, x, t, *labels, train=True, rngs={"dropout": key}),
                    batch_stats)
        variables["batch_stats"] = batch_stats
        out, updates = model.apply(variables, x, t, *labels, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"])
        return out, updates["batch_stats"]

    return apply


def task_loss(cfg: TrainConfig, apply, sde: VPSDE, key, images, labels):
    """The loss of cfg.task for a batch: (loss, new batch_stats)."""
    if cfg.task == "denoiser":
        num_classes = cfg.kwargs.get("num_classes")
        if num_classes is None:
            return losses.dsm_loss(apply, sde, key, images, cfg.t_min)
        return losses.dsm_loss(apply, sde, key, images, cfg.t_min, labels, num_classes,
                               cfg.label_dropout)
    if cfg.task == "classifier":
        return losses.noisy_classifier_loss(apply, sde, key, images, labels, cfg.t_min)
    return losses.clean_classifier_loss(apply, key, images, labels)


def make_train_step(cfg: TrainConfig, model: nn.Module, tx, mesh: Mesh | None = None):
    """Returns jit(train_step)(state, images (B,H,W,C), labels (B,)) -> (state, loss).

    The state's buffers are donated; the step's key is fold_in(key(seed), step). With a
    `mesh`, the batch comes split over its "data" axis and the state (and loss) stay
    replicated: XLA all-reduces the gradients. Random draws do not depend on the sharding.
    """
    sde = sde_of(cfg)
    base_key = jax.random.key(cfg.seed)

    def train_step(state: TrainState, images, labels):
        key = jax.random.fold_in(base_key, state.step)

        def loss_fn(params):
            return task_loss(cfg, _train_apply(model, params, state.batch_stats), sde, key,
                             images, labels)

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if cfg.ema_decay:
            # Warm-up of the EMA: the average starts short and grows to 1 / (1 - decay).
            decay = jnp.minimum(cfg.ema_decay, (1.0 + state.step) / (10.0 + state.step))
            ema = optax.incremental_update(params, ema, 1.0 - decay)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema)
        return new, loss

    if mesh is None:
        return jit(train_step, donate_argnums=0)
    return jit(train_step, donate_argnums=0, out_shardings=parallel.replicated(mesh))


def make_evaluate(cfg: TrainConfig, model: nn.Module, images, labels, n: int = 1000):
    """Returns evaluate(state) -> dict of held-out metrics on the first n test examples.

    denoiser: DSM loss (fixed noise); classifier: accuracy on x_t for t in each quartile
    of [0, T] and at t = 0; evaluator: clean accuracy.
    """
    sde = sde_of(cfg)
    images, labels = jnp.asarray(images[:n]), jnp.asarray(labels[:n])
    key = jax.random.key(10_000 + cfg.seed)

    @jit
    def denoiser_loss(variables):
        apply = lambda x, t, k: (model.apply(variables, x, t), None)
        return losses.dsm_loss(apply, sde, key, images, cfg.t_min)[0]

    @jit
    def accuracy(variables, t):
        x = sde.marginal(key, images, t)[0] if cfg.task == "classifier" else images
        return jnp.mean(jnp.argmax(model.apply(variables, x, t), -1) == labels)

    def evaluate(state: TrainState) -> dict[str, float]:
        variables = eval_variables(state)
        if cfg.task == "denoiser":
            return {"eval/dsm_loss": float(denoiser_loss(variables))}
        out = {"eval/acc_clean": float(accuracy(variables, jnp.zeros(len(images))))}
        if cfg.task == "classifier":
            u = jax.random.uniform(jax.random.fold_in(key, 1), (len(images),))
            for q in range(4):
                t = (q + u) / 4 * sde.T
                out[f"eval/acc_t{q / 4:.2f}-{(q + 1) / 4:.2f}"] = float(accuracy(variables, t))
        return out

    return evaluate


def check_disk_space(workdir: Path, state: TrainState, keep: int) -> None:
    """Fails early unless `workdir` has room for `keep` checkpoints, one in flight and the export.

    A checkpoint holds the whole TrainState; the exported model is smaller. Twice that is kept
    as headroom for Orbax's metadata and for metrics and plots.
    """
    size = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    needed = 2 * (keep + 2) * size
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise TrainingError(
            f"workdir {workdir}: {free / 2**20:.1f} MiB free, but {keep} checkpoints of "
            f"{size / 2**20:.1f} MiB need about {needed / 2**20:.1f} MiB; free space or lower keep")


def train(cfg: TrainConfig, workdir: str | Path, *, data_dir=None, dataset=None,
          progress: bool = True, devices: int | None = None) -> TrainState:
    """Trains cfg.task in `workdir`, resuming from its latest checkpoint.

    Args:
      cfg: the configuration (a resumed run must match it, operational fields aside).
      workdir: holds checkpoints/, metrics.jsonl, loss.png and the exported model/.
      data_dir: the IDX files of cfg.dataset (for MNIST else $JAXGUIDE_DATA_DIR; else
        tensorflow-datasets).
      dataset: ((train_images, train_labels), (test_images, test_labels)) to use instead.
      progress: show a progress bar.
      devices: split each batch over this many devices (default: all, of all processes);
        cfg.batch_size must be a multiple of it. Checkpoints restore on any device count.

    Returns:
      The final TrainState. The eval-mode variables are exported to `workdir/model`.
    """
    if not isinstance(cfg, TrainConfig):
        raise invalid("cfg", type(cfg).__name__, "a TrainConfig (configs.get_config)", TypeError)
    if not isinstance(workdir, (str, os.PathLike)):
        raise invalid("workdir", repr(workdir), "a path", TypeError)
    workdir = Path(workdir)
    mesh = parallel.make_mesh(devices)
    parallel.check_divisible("batch_size", cfg.batch_size, mesh)
    with runtime.output_folder(workdir, "workdir", "training run") as workdir:
        check_workdir(workdir, cfg.task)
        return _train(cfg, workdir, mesh, data_dir, dataset, progress)


def _train(cfg, workdir, mesh, data_dir, dataset, progress) -> TrainState:
    model = make_model(cfg.model, cfg.kwargs)
    if dataset is None:
        dataset = tuple(data.load_dataset(cfg.dataset, split, data_dir) for split in data.SPLITS)
    (x_train, y_train), (x_test, y_test) = data.check_dataset(
        dataset, getattr(model, "num_classes", None),
        min_test_per_class=2 if cfg.task == "evaluator" else 0)  # Its reference statistics.
    data.steps_per_epoch(len(x_train), cfg.batch_size)  # Validates batch_size against n.
    tx = make_optimizer(cfg)
    try:
        state = create_state(cfg, model, tx, x_train.shape[1:])
    except ValueError as e:  # The network's own input check, naming its x.
        raise ValueError(f"dataset: images of shape {x_train.shape[1:]} do not fit the "
                         f"{cfg.model!r} model ({e})") from e
    check_disk_space(workdir, state, cfg.keep)
    state = parallel.replicate(mesh, state)
    mgr = checkpoint.manager(workdir, cfg.keep)
    state, saved = _maybe_resume(mgr, cfg, state)
    last_eval = saved.get("metrics", {})  # Exported even if no step is left.
    images_before = saved.get("images_before", 0)
    if cfg.init_from and int(state.step) == 0:  # A resumed run does not need it any more.
        state = parallel.replicate(mesh, warm_start(cfg, state))
        images_before = trained_images(checkpoint.read_model_metadata(cfg.init_from))
    train_step = make_train_step(cfg, model, tx, mesh)
    evaluate = make_evaluate(cfg, model, x_test, y_test)
    meta = {**model_metadata(cfg, x_train.shape[1:]), "images_before": images_before}
    start = int(state.step)
    log = _Log(workdir / LOG_FILE, after=start, header=_log_header(cfg))
    out, err = Console(sys.stdout), Console(sys.stderr)
    # smoothing=0: the bar's rate is the run's average, (steps done) / (time since the
    # start), as the log's steps_per_s: the one rate shown.
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=cfg.task,
               unit="step", smoothing=0, dynamic_ncols=True, file=err)
    t0, s0 = time.perf_counter(), start
    # SIGINT and SIGTERM are held until the step ends: then a checkpoint is saved and the run
    # stops. The bar ends its line before any error is printed.
    with bar, runtime.Signals() as signals:
        for step in range(start, cfg.steps):
            idx = data.batch_indices(cfg.seed, step, len(x_train), cfg.batch_size)
            state, loss = train_step(state, *parallel.shard_batch(mesh, x_train[idx], y_train[idx]))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                loss = float(loss)
                if not math.isfinite(loss):
                    raise _diverged(f"loss became {loss} at step {done}", mgr)
                rate = (done - s0) / (time.perf_counter() - t0)
                log.write({"step": done, "loss": loss, "steps_per_s": rate,
                           "images_per_s": rate * cfg.batch_size})
                bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
            if done % cfg.eval_every == 0 or done == cfg.steps:
                last_eval = evaluate(state)
                log.write({"step": done, **last_eval})
                _print_above(bar, f"step {done}: " + ", ".join(
                    f"{k}={v:.4f}" for k, v in last_eval.items()), out)
            if done % cfg.ckpt_every == 0 or done == cfg.steps or signals.signum:
                # A finite loss does not imply a finite state (max-pool and ReLU can hide NaNs).
                if not bool(_all_finite(state)):
                    raise _diverged(f"the training state became non-finite by step {done}", mgr)
                checkpoint.save_train(mgr, done, state, {**meta, "step": done, "metrics": last_eval})
            if signals.signum:
                stop = signals.take()
                bar.close()
                print(f"{stop}: saved checkpoint at step {done} in {mgr.directory}; "
                      "run the same command to resume", file=out)
                raise stop
    model_dir = checkpoint.save_model(workdir / "model", eval_variables(state),
                                      {**meta, "step": int(state.step), "metrics": last_eval})
    if jax.process_index() == 0:
        if cfg.task == "evaluator":
            _save_reference_stats(model_dir, x_test, y_test)
        _plot_losses(workdir)
    return state


def _print_above(bar: tqdm, text: str, file) -> None:
    """Prints a line of `text` to `file` above the progress bar: the bar is cleared first and
    drawn again after it, so that the two never share a line (in a terminal, the bar's stderr
    and `file`, stdout, are one screen; tqdm.write clears only a bar on sys.stdout or
    sys.stderr themselves, not on the Console around them)."""
    bar.clear()  # Nothing while the bar is disabled.
    print(text, file=file, flush=True)
    bar.refresh()


def export(workdir: str | Path, step: int | None = None, out: str | Path | None = None) -> Path:
    """Exports training checkpoint `step` (default: the latest) of `workdir` as a model
    checkpoint (EMA variables + metadata) in `out` (default `<workdir>/model`)."""
    if not isinstance(workdir, (str, os.PathLike)):
        raise invalid("workdir", repr(workdir), "a path", TypeError)
    if step is not None:
        step = check_int("step", step, 0)
    if out is not None and not (isinstance(out, (str, os.PathLike)) and os.fspath(out)):
        raise invalid("out", repr(out), "a non-empty path or None (<workdir>/model)")
    workdir = Path(workdir)
    out = checkpoint.check_replaceable(out or workdir / "model")
    if (out / checkpoint.REFERENCE_FILE).exists():  # train() computes them from the test set.
        raise TrainingError(f"{out}: holds the {checkpoint.REFERENCE_FILE} of an evaluator, which "
                            "export cannot recompute (no data); accepted a new path (out=...)")
    if not (workdir / "checkpoints").is_dir():
        raise TrainingError(f"workdir {workdir}: no checkpoints/ folder; accepted a work dir "
                            "that train.py wrote")
    with checkpoint.manager(workdir) as mgr:
        steps = list(mgr.all_steps())
        step = mgr.latest_step() if step is None else step
        if step not in steps:
            which = "" if step is None else f" {step}"
            raise TrainingError(f"workdir {workdir}: no training checkpoint{which}; accepted "
                                f"a step in {steps}")
        meta = checkpoint.read_train_metadata(mgr, step)
        cfg = TrainConfig.from_dict(meta["config"])
        model = make_model(cfg.model, cfg.kwargs)
        tx = make_optimizer(cfg)
        abstract = jax.eval_shape(lambda: create_state(cfg, model, tx, tuple(meta["image_shape"])))
        state = checkpoint.restore_train(mgr, step, checkpoint.abstract(abstract))
    progress = {k: meta[k] for k in ("step", "images_before", "metrics") if k in meta}
    return checkpoint.save_model(out, eval_variables(state),
                                 {**model_metadata(cfg, meta["image_shape"]), **progress})


def _save_reference_stats(model_dir: Path, images, labels) -> None:
    """Stores the evaluator's feature statistics of the test set beside its checkpoint."""
    from jaxguide import metrics

    feats = metrics.Evaluator(model_dir)(images).features
    np.savez(model_dir / metrics.REFERENCE_FILE, **metrics.reference_stats(feats, labels))


@jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _diverged(what: str, mgr) -> TrainingError:
    step = mgr.latest_step()
    last = (f"The last good checkpoint is step {step} in {mgr.directory}" if step is not None
            else f"No checkpoint was written yet in {mgr.directory}")
    return TrainingError(f"{what}; stopped. {last} (try a lower learning rate)")


def trained_images(meta: dict[str, Any]) -> int:
    """The training images behind a checkpoint with metadata `meta`: its run's steps × batch,
    plus those of the model it started from (`images_before`, recorded by --init-from)."""
    return meta.get("images_before", 0) + meta["step"] * meta["config"]["batch_size"]


def model_metadata(cfg: TrainConfig, image_shape) -> dict[str, Any]:
    """What a checkpoint records to rebuild its model: task, model, kwargs, config, SDE."""
    return {"task": cfg.task, "dataset": cfg.dataset, "model": cfg.model,
            "model_kwargs": cfg.to_dict()["model_kwargs"],
            "config": cfg.to_dict(), "image_shape": list(image_shape),
            "sde": {"beta_min": cfg.beta_min, "beta_max": cfg.beta_max, "T": cfg.T}}


def _maybe_resume(mgr, cfg: TrainConfig, state: TrainState) -> tuple[TrainState, dict]:
    """(the state of the latest checkpoint, its metrics and images_before), or (state, {})."""
    step = mgr.latest_step()
    if step is None:
        return state, {}
    saved = checkpoint.read_train_metadata(mgr, step)
    diffs = cfg.differences(TrainConfig.from_dict(saved["config"]))
    if diffs:
        raise TrainingError(f"{mgr.directory}/{step} was written with another config; "
                            f"differs in {'; '.join(diffs)} (requested vs saved). "
                            "Use another work dir or the same settings")
    state = checkpoint.restore_train(mgr, step, checkpoint.abstract(state))
    metrics = saved.get("metrics")
    return state, {"metrics": metrics if isinstance(metrics, dict) else {},
                   "images_before": int(saved.get("images_before", 0))}


LOG_FILE, PLOT_FILE = "metrics.jsonl", "loss.png"
LOG_HEADER = "jaxguide_log"  # A log's first record: {"step": 0, LOG_HEADER: 1, "task": ...}.


def _log_records(path: Path) -> list[dict[str, Any]] | None:
    """The records of a training log, or None unless every line is a JSON object with an
    integer "step" (a file that is not a jaxguide log). A last line without its newline, cut
    short by a kill, is dropped."""
    try:
        lines = path.read_text().split("\n")
        torn = lines.pop()  # "" after a whole last line.
        records = [json.loads(line) for line in lines]
        if torn:
            with contextlib.suppress(ValueError):
                records.append(json.loads(torn))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = all(isinstance(r, dict) and type(r.get("step")) is int for r in records)
    return records if ok else None


def _log_header(cfg: TrainConfig) -> dict[str, Any]:
    return {"step": 0, LOG_HEADER: 1, "task": cfg.task, "model": cfg.model}


def _log_task(records: list[dict[str, Any]] | None) -> str | None:
    """The task named by a training log's header (its first record), or None if it has none."""
    if records and records[0].get(LOG_HEADER) == 1 and isinstance(records[0].get("task"), str):
        return records[0]["task"]
    return None


def check_workdir(workdir: str | Path, task: str) -> None:
    """Raises unless training `task` may write in `workdir`, before it starts: the model/ it
    exports, the log and the plot it writes must be absent or a jaxguide run's (of `task`).
    A user's file of the same name is never appended to or replaced."""
    workdir = Path(workdir)
    checkpoint.check_replaceable(workdir / "model", task)
    folder, log, plot = workdir / "checkpoints", workdir / LOG_FILE, workdir / PLOT_FILE
    if os.path.lexists(folder) and not folder.is_dir():
        raise _not_a_run(workdir, "checkpoints is not a folder, so no checkpoint can be saved")
    if os.path.lexists(log):
        owner = _log_task(_log_records(log) if log.is_file() else None)
        if owner is None:
            raise _not_a_run(workdir, f"{LOG_FILE} is not a jaxguide training log (its first "
                                      "line is not jaxguide's header), so it is not written to")
        if owner != task:
            raise TrainingError(f"workdir {workdir}: {LOG_FILE} is the log of a {owner} run; "
                                f"accepted a new work dir or one of a {task} run")
    if os.path.lexists(plot) and not _made_here(plot):
        raise _not_a_run(workdir, f"{PLOT_FILE} is not a plot jaxguide made, so it is not replaced")


def _not_a_run(workdir: Path, what: str) -> TrainingError:
    """The error, to raise, for a `workdir` that holds `what` of no jaxguide run's."""
    return TrainingError(f"workdir {workdir}: {what}; accepted a new work dir or one of a "
                         "jaxguide run")


def _made_here(path: Path) -> bool:
    """Whether `path` is a file that jaxguide made (`runtime.made_here`); False if unreadable."""
    try:
        return runtime.made_here(path)
    except OSError:
        return False


class _Log:
    """Appends JSON lines to a training log that starts with `header` (step 0); records
    after step `after` (those of steps a resumed run takes again, or of a run that never
    saved a checkpoint) are dropped first."""

    def __init__(self, path: Path, after: int, header: dict[str, Any]):
        self.path = path
        records = _log_records(path) if path.is_file() else None
        if jax.process_index() == 0:  # Also ends a torn last line.
            kept = [r for r in records if r["step"] <= after] if records else [header]
            runtime.replace_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if jax.process_index() > 0:  # One log per run, written by process 0.
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _plot_losses(workdir: Path) -> None:
    from jaxguide import viz

    records = _log_records(workdir / LOG_FILE)
    if records:
        viz.plot_losses(records, workdir / PLOT_FILE)
