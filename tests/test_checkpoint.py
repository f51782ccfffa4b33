"""Bad checkpoints and bad checkpoint destinations get one clear error naming the file.

Metadata that parses but has bad fields, damaged `state/` folders (told apart from arrays of
another model), exports and saves that would replace what a user made, and a missing work
dir. Each case edits a copy of the tiny checkpoints (`tiny_checkpoints` in conftest.py).
"""

from __future__ import annotations

import gc
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import raising_cases, run_cli
from jaxguide import checkpoint, training
from jaxguide.checkpoint import CheckpointError
from jaxguide.configs import get_config
from jaxguide.nets import make_model
from jaxguide.training import TrainingError

# ----------------------------------------------------------------------- helpers


def edit(meta: dict, change) -> None:
    """Applies `change` to metadata: {field: value} (None deletes), or a function of it."""
    if callable(change):
        change(meta)
        return
    for field, value in change.items():
        if value is None:
            del meta[field]
        else:
            meta[field] = value


def with_kwarg(name, value):
    return lambda meta: meta["model_kwargs"].update({name: value})


def with_sde(**fields):
    return lambda meta: meta["sde"].update(fields)


def copy_model(tiny_checkpoints, tmp_path, task="denoiser", change=None) -> Path:
    """A copy of the tiny `task` model checkpoint with its metadata edited by `change`."""
    path = tmp_path / task
    shutil.copytree(tiny_checkpoints / task, path)
    if change is not None:
        meta_file = path / "metadata.json"
        meta = json.loads(meta_file.read_text())
        edit(meta, change)
        meta_file.write_text(json.dumps(meta))
    return path


def hidden(folder: Path) -> list[str]:
    """Hidden entries of `folder`: what a save left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_short(message: str) -> None:
    assert "\n" not in message and len(message) < 400, message
    assert "tensorstore_spec" not in message and "TensorStore(" not in message, message


# ----------------------------------------------------------------------- metadata fields

SHAPE_GOT = r"/metadata\.json: image_shape: got .*; accepted a list of 3 integers > 0"

META_CASES = {
    # id: (task, change, regex after the checkpoint dir)
    "no-sde": ("denoiser", {"sde": None}, r"/metadata\.json: no 'sde' field; accepted an object "
                                          r"with exactly beta_min, beta_max, T"),
    "no-image_shape": ("denoiser", {"image_shape": None},
                       r"/metadata\.json: no 'image_shape' field; accepted"),
    "no-task": ("denoiser", {"task": None}, r"/metadata\.json: no 'task' field"),
    "no-model": ("denoiser", {"model": None}, r"/metadata\.json: no 'model' field"),
    "no-model_kwargs": ("denoiser", {"model_kwargs": None},
                        r"/metadata\.json: no 'model_kwargs' field"),
    "task-bogus": ("denoiser", {"task": "generator"},
                   r"/metadata\.json: task: got 'generator'; accepted one of denoiser, "
                   r"classifier, evaluator"),
    "model-int": ("denoiser", {"model": 3},
                  r"/metadata\.json: model: got 3; accepted a model name"),
    "model-bogus": ("denoiser", {"model": "resnet"},
                    r"/metadata\.json: model: got 'resnet' for task 'denoiser'; accepted unet, "
                    r"seed"),
    "model-of-another-task": ("classifier", {"model": "unet"},
                              r"/metadata\.json: model: got 'unet' for task 'classifier'; "
                              r"accepted resnet, tutorial"),
    "task-of-another-model": ("denoiser", {"task": "classifier"},
                              r"/metadata\.json: model: got 'unet' for task 'classifier'"),
    "format_version-string": ("denoiser", {"format_version": "1"},
                              r": format_version: got '1'; accepted an integer in 1\.\.1"),
    "format_version-negative": ("denoiser", {"format_version": -5},
                                r": format_version: got -5; accepted an integer in 1\.\.1"),
    "format_version-bool": ("denoiser", {"format_version": True},
                            r": format_version: got True; accepted an integer in 1\.\.1"),
    "model_kwargs-string": ("denoiser", {"model_kwargs": "x"},
                            r"/metadata\.json: model_kwargs: got 'x'; accepted"),
    "image_shape-string": ("denoiser", {"image_shape": "abc"},
                           r"/metadata\.json: image_shape: got 'abc'; accepted a list of 3 "
                           r"integers > 0"),
    "image_shape-2d": ("denoiser", {"image_shape": [28, 28]},
                       r"/metadata\.json: image_shape: got \[28, 28\]"),
    "image_shape-zero": ("denoiser", {"image_shape": [28, 28, 0]}, SHAPE_GOT),
    "image_shape-float": ("denoiser", {"image_shape": [28.0, 28, 1]}, SHAPE_GOT),
    "image_shape-bool": ("denoiser", {"image_shape": [True, 28, 1]}, SHAPE_GOT),
    "image_shape-odd": ("denoiser", {"image_shape": [27, 27, 1]},
                        r"/metadata\.json: model 'unet' does not run with model_kwargs \{.*\} on "
                        r"image_shape \[27, 27, 1\] \(.*\); accepted"),
    "sde-string": ("denoiser", {"sde": "vp"},
                   r"/metadata\.json: sde: got 'vp'; accepted an object with exactly"),
    "sde-extra-key": ("denoiser", with_sde(foo=1),
                      r"/metadata\.json: sde: got \{.*'foo': 1.*\}; accepted"),
    "sde-missing-key": ("denoiser", lambda meta: meta["sde"].pop("T"),
                        r"/metadata\.json: sde: got .*; accepted"),
    "sde-beta_min-negative": ("denoiser", with_sde(beta_min=-1),
                              r"/metadata\.json: sde: .*beta_min.*-1"),
    "sde-beta_min-string": ("denoiser", with_sde(beta_min="a"),
                            r"/metadata\.json: sde: .*beta_min"),
    # Refused by the model's own checks when it is built, or else when it is traced.
    "channels-string": ("denoiser", with_kwarg("channels", "ab"),
                        r"(/metadata\.json: unknown model or model_kwargs \(.*channels"
                        r"|/metadata\.json: model 'unet' does not run with model_kwargs .*'ab')"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_bad_metadata_field(case, tiny_checkpoints, tmp_path):
    task, change, pattern = META_CASES[case]
    path = copy_model(tiny_checkpoints, tmp_path, task, change)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + pattern) as e:
        checkpoint.load_model(path)
    assert_short(str(e.value))


def test_pipeline_refuses_models_of_different_image_shapes(tiny_checkpoints, tmp_path):
    """A denoiser that runs at 32×32 loads by itself; beside a 28×28 classifier it is refused."""
    from jaxguide import pipeline

    copy_model(tiny_checkpoints, tmp_path, "denoiser", {"image_shape": [32, 32, 1]})
    shutil.copytree(tiny_checkpoints / "classifier", tmp_path / "classifier")
    checkpoint.load_model(tmp_path / "denoiser")
    with pytest.raises(CheckpointError, match=r"denoiser was trained with image_shape "
                       r"\[32, 32, 1\], the classifier with \[28, 28, 1\]"):
        pipeline.load_pipeline(tmp_path)


# ----------------------------------------------------------------------- arrays of another model

MISMATCH_CASES = {
    # id: (task, change, regex after "checkpoint dir <path>: arrays do not match the model: ")
    "image_shape-3-channels": ("denoiser", {"image_shape": [28, 28, 3]},
                               r"\['params'\]\['Conv_0'\]\['kernel'\] has shape \(3, 3, 4, 8\), "
                               r"the model expects \(3, 3, 12, 8\)"),
    "emb_dim": ("denoiser", with_kwarg("emb_dim", 8), r".* has shape .*, the model expects"),
    "blocks": ("denoiser", with_kwarg("blocks", 2), r".* is missing"),
    "classifier-width": ("classifier", with_kwarg("channels", [8, 24]), r".* has shape"),
}


@pytest.mark.parametrize("case", list(MISMATCH_CASES))
def test_arrays_of_another_model(case, tiny_checkpoints, tmp_path):
    task, change, pattern = MISMATCH_CASES[case]
    path = copy_model(tiny_checkpoints, tmp_path, task, change)
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint dir {path}: arrays do not match the model: ") + pattern) as e:
        checkpoint.load_model(path)
    assert "unreadable" not in str(e.value) and "model_kwargs, image_shape" in str(e.value)
    assert_short(str(e.value))


# ----------------------------------------------------------------------- damaged state/


def data_files(state: Path) -> list[Path]:
    return [f for f in state.rglob("*") if f.is_file() and "ocdbt.process" in str(f)]


def truncate(state: Path) -> None:
    for f in data_files(state):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def overwrite(state: Path) -> None:
    for f in data_files(state):
        f.write_bytes(b"garbage" * 10)


def empty(state: Path) -> None:
    shutil.rmtree(state)
    state.mkdir()


CORRUPT_CASES = {
    "no-manifest": lambda state: (state / "manifest.ocdbt").unlink(),
    "no-_METADATA": lambda state: (state / "_METADATA").unlink(),
    "empty": empty,
    "truncated": truncate,
    "garbage": overwrite,
}


@pytest.mark.parametrize("case", list(CORRUPT_CASES))
def test_corrupt_state(case, tiny_checkpoints, tmp_path, monkeypatch):
    path = copy_model(tiny_checkpoints, tmp_path)
    CORRUPT_CASES[case](path / "state")
    background = []  # Orbax's abandoned reads would report "Event loop is closed" here.
    monkeypatch.setattr(sys, "unraisablehook", background.append)
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint dir {path}: state/ unreadable: corrupt or incomplete (")) as e:
        checkpoint.load_model(path)
    time.sleep(0.2)
    gc.collect()
    assert background == []
    assert "do not match" not in str(e.value)
    assert_short(str(e.value))
    Unraisable()  # Other reports still reach the hook.
    gc.collect()
    assert [str(r.exc_value) for r in background] == ["not Orbax's"]


class Unraisable:
    def __del__(self):
        raise ValueError("not Orbax's")


def test_asyncio_filter_drops_only_abandoned_orbax_reads():
    """A never-retrieved future's exception from TensorStore's C++ (no Python frames, a
    status code first) is dropped; others, and other asyncio records, pass."""
    from jaxguide.checkpoint import _not_an_abandoned_read

    def record(message, exc):
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), exc_info)

    try:
        raise ValueError("a user's coroutine failed")
    except ValueError as e:
        from_python = e
    never = "Future exception was never retrieved"
    assert not _not_an_abandoned_read(record(never, ValueError("OUT_OF_RANGE: Error reading")))
    assert _not_an_abandoned_read(record(never, ValueError("set by a user's callback")))
    assert _not_an_abandoned_read(record(never, from_python))
    assert _not_an_abandoned_read(record("Task was destroyed but it is pending!", None))


UNSTARTED_AT_EXIT = """
import os, sys
from jaxguide import checkpoint
checkpoint._close_unstarted_reads_at_exit()  # As after a failed read.
orbax, elsewhere = {}, {}
exec(compile("async def read(): pass", os.path.join(checkpoint._ORBAX_DIR, "x.py"), "exec"), orbax)
exec(compile("async def mine(): pass", "mine.py", "exec"), elsewhere)
sys.modules["__main__"].held = [orbax["read"](), elsewhere["mine"]()]  # Collected at exit.
"""


def test_unstarted_reads_are_closed_at_exit():
    """An Orbax read that never started is closed silently at exit; any other coroutine still
    warns that it was never awaited."""
    proc = subprocess.run([sys.executable, "-c", UNSTARTED_AT_EXIT], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "'mine' was never awaited" in proc.stderr and "'read'" not in proc.stderr


def test_corrupt_state_cli_subprocess(tiny_checkpoints, tmp_path):
    """sample.py prints one line, and no background traceback follows it."""
    ckdir = tmp_path / "ck"
    shutil.copytree(tiny_checkpoints, ckdir)
    overwrite(ckdir / "denoiser" / "state")
    proc = run_cli("sample.py", "--checkpoint-dir", ckdir, "--out", tmp_path / "out",
                   "--steps", "2", "--per-class", "1", "--classes", "0", timeout=240)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "state/ unreadable: corrupt or incomplete" in lines[0], proc.stderr


# ----------------------------------------------------------------------- path argument


@pytest.mark.parametrize("call", [
    lambda: checkpoint.load_model(None),
    lambda: checkpoint.read_model_metadata(3),
    lambda: checkpoint.save_model(None, {}, {}),
], ids=["load_model", "read_model_metadata", "save_model"])
def test_path_of_another_type(call):
    with pytest.raises(TypeError, match=r"path: got (None|3); accepted a str or os\.PathLike"):
        call()


# ----------------------------------------------------------------------- saves and exports


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    """A work dir with one training checkpoint (step 1) of the tiny classifier, untrained."""
    cfg = get_config("classifier", preset="tiny")
    model = make_model(cfg.model, cfg.kwargs)
    state = jax.jit(lambda: training.create_state(cfg, model, training.make_optimizer(cfg)))()
    workdir = tmp_path_factory.mktemp("export") / "w"
    with checkpoint.manager(workdir) as mgr:
        checkpoint.save_train(mgr, 1, state, {**training.model_metadata(cfg, (28, 28, 1)),
                                              "step": 1, "metrics": {}})
    return workdir


@pytest.fixture
def workdir(train_dir, tmp_path) -> Path:
    shutil.copytree(train_dir, tmp_path / "w")
    return tmp_path / "w"


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path / "notes.txt"


def user_file(path: Path) -> Path:
    path.write_text("mine")
    return path


DESTINATION_CASES = {
    # id: (what the user has there, destination relative to it)
    "folder": (user_folder, ""),
    "file": (user_file, ""),
    "folder-symlink": (lambda p: user_folder(p.with_name("real")), "symlink"),
}


def make_destination(case: str, where: Path) -> tuple[Path, Path]:
    """(the destination, the user's file that must survive)."""
    make, kind = DESTINATION_CASES[case]
    mine = make(where)
    if kind == "symlink":
        where.symlink_to(mine.parent)
    return where, mine


@pytest.mark.parametrize("case", list(DESTINATION_CASES))
def test_export_never_replaces_a_users_files(case, workdir, tmp_path):
    out, mine = make_destination(case, tmp_path / "userdir")
    with pytest.raises(CheckpointError, match=re.escape(f"{out}: exists and is not a jaxguide "
                                                        "model checkpoint") + r".*; accepted"):
        training.export(workdir, out=out)
    assert mine.read_text() == "mine"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("case", list(DESTINATION_CASES))
def test_save_model_never_replaces_a_users_files(case, tiny_checkpoints, tmp_path):
    _, variables, meta = checkpoint.load_model(tiny_checkpoints / "classifier")
    out, mine = make_destination(case, tmp_path / "userdir")
    with pytest.raises(CheckpointError, match=re.escape(f"{out}: exists and is not")):
        checkpoint.save_model(out, variables, meta)
    assert mine.read_text() == "mine"
    assert hidden(tmp_path) == []


def test_export_keeps_a_model_folder_that_holds_more_than_the_model(workdir, tiny_checkpoints):
    """Sample outputs or notes kept in <workdir>/model survive a re-export (it is refused)."""
    model = workdir / "model"
    shutil.copytree(tiny_checkpoints / "classifier", model)
    mine = user_file(model / "notes.txt")
    with pytest.raises(CheckpointError, match=re.escape(f"{model}: holds notes.txt besides the "
                                                        "model, so it is not replaced")):
        training.export(workdir)
    assert mine.read_text() == "mine"


def test_train_never_replaces_a_model_of_another_task(tiny_checkpoints, tmp_path):
    shutil.copytree(tiny_checkpoints / "denoiser", tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"holds a 'denoiser' model, not replaced by a "
                       r"'classifier' one"):
        training.train(get_config("classifier", preset="tiny"), tmp_path,
                       data_dir=tmp_path / "no-data", progress=False)  # Before any data.
    assert checkpoint.read_model_metadata(tmp_path / "model")["task"] == "denoiser"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("variables, change, pattern", [
    ("same", lambda m: m.pop("task"), r"metadata: no 'task' field; accepted"),
    ("same", lambda m: m.update(step=np.int64(3)), r"metadata: not JSON"),
    (None, None, r"variables: got None; accepted a non-empty pytree of arrays"),
    ("nan", None, r"variables: contain NaN or inf"),
    ("same", lambda m: m.update(model="unet"),
     r"metadata: model: got 'unet' for task 'classifier'; accepted resnet, tutorial"),
    ("same", lambda m: m.update(task="evaluator"),
     r"metadata: model: got 'resnet' for task 'evaluator'; accepted evaluator"),
    ("same", lambda m: m["model_kwargs"].update(blocks="x"),
     r"metadata: (unknown model or model_kwargs|model 'resnet' does not run).*blocks"),
    ("same", lambda m: m["model_kwargs"].update(channels=[8, 24]),
     r"variables: arrays do not match the model: .* has shape .*; accepted the arrays of the "
     r"model that metadata describes"),
    ("other", None, r"variables: arrays do not match the model: .* is missing"),
])
def test_save_model_checks_before_replacing_a_model(variables, change, pattern,
                                                    tiny_checkpoints, tmp_path):
    """A bad save never replaces the good model checkpoint it was aimed at."""
    good = tmp_path / "classifier"
    shutil.copytree(tiny_checkpoints / "classifier", good)
    _, good_vars, meta = checkpoint.load_model(good)
    if change is not None:
        change(meta)
    if variables == "same":
        variables = good_vars
    elif variables == "nan":
        variables = jax.tree.map(lambda x: x * np.nan, good_vars)
    elif variables == "other":
        variables = {"params": {"w": jnp.zeros(3)}}
    with pytest.raises(CheckpointError, match=pattern):
        checkpoint.save_model(good, variables, meta)
    checkpoint.load_model(good)  # Still there, intact.
    assert hidden(tmp_path) == []


def test_export_to_a_path_under_a_file(workdir, tmp_path):
    mine = user_file(tmp_path / "afile")
    with pytest.raises(CheckpointError, match=re.escape(f"{mine / 'model'}: cannot write in "
                                                        f"{mine}") + r" \(.*\); accepted"):
        training.export(workdir, out=mine / "model")
    assert mine.read_text() == "mine" and hidden(tmp_path) == []


def test_export_default_destination_is_a_file(workdir):
    mine = user_file(workdir / "model")
    with pytest.raises(CheckpointError, match=re.escape(f"{mine}: exists and is not")):
        training.export(workdir)
    assert mine.read_text() == "mine" and hidden(workdir) == []


def test_export_replaces_a_model_checkpoint(workdir, tmp_path):
    out = training.export(workdir, out=tmp_path / "model")
    stale = out / "state" / "stale"  # Marks the old export.
    stale.write_text("old")
    assert training.export(workdir, out=out) == out
    assert not stale.exists() and hidden(tmp_path) == []
    checkpoint.load_model(out, task="classifier")


def test_failed_save_leaves_no_temp_and_keeps_the_old_model(workdir, tmp_path, monkeypatch):
    out = training.export(workdir, out=tmp_path / "model")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def fail(metadata):  # Called after the arrays are written, before the commit.
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "stamp", fail)
    with pytest.raises(OSError, match="disk full"):
        training.export(workdir, out=out)
    assert hidden(tmp_path) == []
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_train_checks_the_export_destination_first(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    mine = user_folder(workdir / "model")
    # A data dir that does not exist: the destination is refused before any data is read.
    with pytest.raises(CheckpointError, match=re.escape(f"{workdir / 'model'}: exists and is not")):
        training.train(get_config("classifier", preset="tiny"), workdir,
                       data_dir=tmp_path / "no-mnist", progress=False)
    assert mine.read_text() == "mine"
    assert not (workdir / "checkpoints").exists() and hidden(workdir) == []


# ----------------------------------------------------------------------- export's work dir


def test_export_of_a_missing_workdir_creates_nothing(tmp_path):
    workdir = tmp_path / "nope"
    with pytest.raises(TrainingError, match=re.escape(
            f"workdir {workdir}: no checkpoints/ folder; accepted a work dir that train.py")):
        training.export(workdir)
    assert list(tmp_path.iterdir()) == []


def test_export_without_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(TrainingError, match=re.escape(
            f"workdir {tmp_path}: no training checkpoint; accepted a step in []")):
        training.export(tmp_path)
    assert not (tmp_path / "model").exists()


def test_export_of_a_missing_step(workdir):
    with pytest.raises(TrainingError, match=re.escape(
            f"workdir {workdir}: no training checkpoint 5; accepted a step in [1]")):
        training.export(workdir, 5)
    assert not (workdir / "model").exists() and hidden(workdir) == []


test_load_model_bad_argument = raising_cases({
    "load_model-missing": (lambda: checkpoint.load_model("/nonexistent/jaxguide-model"),
                           CheckpointError, r"checkpoint dir /nonexistent/jaxguide-model: not found"),
})
