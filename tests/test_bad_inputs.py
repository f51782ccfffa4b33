"""Every bad input gets a clear error.

CLIs: one line `error: ...` on stderr naming the argument, the value and what is accepted;
exit status 2; no traceback (`--debug` shows it). Most cases call `cli.run(main, argv)` in
this process (the exit status it returns is the process's); a few run as real subprocesses
to check the process exit status. The Python API raises specific exception types whose
messages name the argument.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_script, raising_cases, run_cli
from test_data import write_dataset
from jaxguide import checkpoint, cli, data, metrics, pipeline, training
from jaxguide.checkpoint import CheckpointError
from jaxguide.configs import TrainConfig, get_config
from jaxguide.data import DataError
from jaxguide.nets import apply_fn, make_model
from jaxguide.samplers import sample, time_grid
from jaxguide.scores import (add_scores, classifier_guidance, guidance_term, label_log_prob,
                             score_from_eps)
from jaxguide.sde import VPSDE

# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bad(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Paths for the bad-input cases: broken checkpoint dirs, a regular file, bad data."""
    root = tmp_path_factory.mktemp("bad")
    den, cls = tiny_checkpoints / "denoiser", tiny_checkpoints / "classifier"

    def ckdir(name, denoiser=den, classifier=cls):
        d = root / name
        shutil.copytree(denoiser, d / "denoiser")
        shutil.copytree(classifier, d / "classifier")
        return d

    paths = {"ck": tiny_checkpoints, "missing": root / "does-not-exist", "empty": root / "empty"}
    paths["empty"].mkdir()
    paths["corrupt_json"] = ckdir("corrupt_json")
    (paths["corrupt_json"] / "denoiser" / "metadata.json").write_text('{"format": "jaxgu')
    paths["future"] = ckdir("future")
    meta_file = paths["future"] / "denoiser" / "metadata.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "format_version": 999}))
    paths["swapped"] = ckdir("swapped", denoiser=cls, classifier=den)
    paths["half_written"] = ckdir("half_written")
    shutil.rmtree(paths["half_written"] / "denoiser" / "state")
    paths["file"] = root / "a-file"
    paths["file"].write_text("not a folder\n")
    paths["corrupt_idx"] = root / "corrupt_idx"
    paths["corrupt_idx"].mkdir()
    for split in ("train", "test"):
        for name in data._IDX_FILES[split]:
            (paths["corrupt_idx"] / name).write_bytes(b"\x00\x00\x08\x07garbage")
    paths["tiny_mnist"] = root / "tiny_mnist"
    paths["tiny_mnist"].mkdir()
    write_dataset(paths["tiny_mnist"], gz=False, n_train=64, n_test=16)
    paths["out"] = root / "out"
    paths["workdir"] = root / "workdir"
    return paths


def fill(argv, paths):
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]


def assert_one_line_error(rc, err, expected):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"


# ------------------------------------------------------------------------ sample.py

# A base command that would succeed; each case's arguments come after it (and win).
SAMPLE_BASE = ["--checkpoint-dir", "{ck}", "--out", "{out}/sample", "--steps", "2",
               "--per-class", "1", "--classes", "0,1"]

SAMPLE_CASES = {
    # id: (arguments, texts the one-line error must contain)
    "classes-11": (["--classes", "11"], ["--classes", "got 11", "accepted 0-9"]),
    "classes-negative": (["--classes", "-1"], ["--classes", "'-1'", "accepted"]),
    "classes-letters": (["--classes", "abc"], ["--classes", "'abc'", "accepted"]),
    "classes-empty": (["--classes", ""], ["--classes", "got ''", "accepted"]),
    "classes-empty-range": (["--classes", "3-1"], ["--classes", "'3-1'", "accepted"]),
    "classes-double-comma": (["--classes", "0,,3"], ["--classes", "'0,,3'", "accepted"]),
    "classes-in-range-list": (["--classes", "0-3,12"], ["--classes", "got 12", "accepted 0-9"]),
    "per-class-0": (["--per-class", "0"], ["--per-class", "got 0", "accepted an integer >= 1"]),
    "per-class-negative": (["--per-class", "-3"], ["--per-class", "got -3", "integer >= 1 and <="]),
    "steps-negative": (["--steps", "-1"], ["--steps", "got -1", "integer >= 1 and <="]),
    "steps-0": (["--steps", "0"], ["--steps", "got 0", "integer >= 1 and <="]),
    "scale-nan": (["--scale", "nan"], ["--scale", "got nan", "accepted a finite number >= 0"]),
    "scale-inf": (["--scale", "inf"], ["--scale", "got inf", "finite"]),
    "scale-negative": (["--scale", "-1"], ["--scale", "got -1", ">= 0"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "got -1", "integer >= 0 and <="]),
    "sampler-bogus": (["--sampler", "bogus"], ["--sampler", "'bogus'", "euler_maruyama, "]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "got 0", "integer >= 1 and <="]),
    "checkpoint-dir-missing": (["--checkpoint-dir", "{missing}"],
                               ["--checkpoint-dir", "does-not-exist", "not found"]),
    "checkpoint-dir-empty": (["--checkpoint-dir", "{empty}"],
                             ["--checkpoint-dir", "empty", "no denoiser/", "accepted"]),
    "checkpoint-corrupt-json": (["--checkpoint-dir", "{corrupt_json}"],
                                ["--checkpoint-dir", "metadata.json", "unreadable JSON"]),
    "checkpoint-future-format": (["--checkpoint-dir", "{future}"],
                                 ["--checkpoint-dir", "format version 999", "upgrade jaxguide"]),
    "checkpoint-swapped": (["--checkpoint-dir", "{swapped}"],
                           ["--checkpoint-dir", "holds a 'classifier' model",
                            "expected a 'denoiser' model"]),
    "checkpoint-half-written": (["--checkpoint-dir", "{half_written}"],
                                ["--checkpoint-dir", "denoiser", "no state/ (half-written?)"]),
    "out-under-a-file": (["--out", "{file}/out"], ["--out", "a-file/out", "not writable"]),
    "devices-0": (["--devices", "0"], ["--devices", "got 0", "accepted 1..1"]),
    "devices-too-many": (["--devices", "5"], ["--devices", "got 5", "accepted 1..1", "cpu"]),
    "num-processes-0": (["--num-processes", "0"], ["--num-processes", "got 0", ">= 1"]),
    "process-id-out-of-range": (["--num-processes", "2", "--process-id", "2"],
                                ["--process-id", "got 2", "accepted 0..1"]),
    "classes-open-range": (["--classes", "0-"], ["--classes", "'0-'", "accepted"]),
    "classes-huge-range": (["--classes", "0-100000000"],  # Refused before it is expanded.
                           ["--classes", "got 100000000", "accepted 0-9 (the classifier's"]),
    "per-class-huge": (["--per-class", "1000000000"],
                       ["--per-class", "got 1000000000", "integer >= 1 and <= 100000"]),
    "too-many-images": (["--per-class", "20000", "--classes", "0-9"],
                        ["--per-class", "200000 images", "at most 100000"]),
    "steps-huge": (["--steps", "3000000000"], ["--steps", "got 3000000000", "<= 100000"]),
    "batch-size-huge": (["--batch-size", "100000"], ["--batch-size", "got 100000", "<= 8192"]),
    "scale-overflows-float32": (["--scale", "1e39"], ["--scale", "got 1e+39", "at most"]),
    "seed-beyond-32-bits": (["--seed", "4294967296"],
                            ["--seed", "got 4294967296", "integer >= 0 and <= 4294967295"]),
    "evaluate-one-per-class": (["--evaluate", "--per-class", "1"],
                               ["--per-class", "got 1", "--evaluate needs >= 2"]),
    "data-dir-without-figures": (["--data-dir", "{missing}"], ["--data-dir", "figures"]),
    "out-empty": (["--out", ""], ["--out", "got ''", "accepted a folder path"]),
    "checkpoint-dir-empty-string": (["--checkpoint-dir", " "],
                                    ["--checkpoint-dir", "got ' '", "folder path"]),
    "checkpoint-dir-a-file": (["--checkpoint-dir", "{file}"],
                              ["--checkpoint-dir", "a-file", "is a file"]),
    "coordinator-address-bad": (["--coordinator-address", "not an address"],
                                ["--coordinator-address", "'not an address'", "host:port"]),
    "coordinator-port-too-big": (["--coordinator-address", "localhost:99999"],
                                 ["--coordinator-address", "port in 1..65535"]),
    "out-a-file": (["--out", "{file}"], ["--out", "a-file", "is a file, accepted a folder"]),
    "figures-data-dir-missing": (["figures", "--data-dir", "{missing}"],
                                 ["--data-dir", "does-not-exist", "not found"]),
    "figures-steps-0": (["figures", "--steps", "0"], ["--steps", "got 0", "integer >= 1 and <="]),
    "figures-evaluate": (["figures", "--evaluate"], ["--evaluate", "used only by"]),
    # In a folder that exists (a failed run removes the {out} it created): os.stat reports
    # a missing parent before a name too long.
    "out-name-too-long": (["--out", "{empty}/" + "b" * 300], ["--out", "an unusable path"]),
    "out-name-too-long-under-a-new-folder": (["--out", "{empty}/new/" + "b" * 300],
                                             ["--out", "an unusable path (File name too long)"]),
    "out-not-utf8": (["--out", "{out}/bad\udcff"], ["--out", "accepted a UTF-8 path"]),
    "figures-checkpoint-dir-empty": (["figures", "--checkpoint-dir", "{empty}"],
                                     ["--checkpoint-dir", "no denoiser/"]),
    # Only ASCII digits: no sign, other scripts' digits or underscores (as int() accepts).
    "classes-plus": (["--classes", "+3"], ["--classes", "got '+3'", "accepted digits"]),
    "classes-arabic-indic": (["--classes", "\u0663"], ["--classes", "got '\u0663'", "accepted"]),
    "classes-underscore": (["--classes", "1_0"], ["--classes", "got '1_0'", "accepted"]),
    "classes-fullwidth-in-range": (["--classes", "0-\uff19"], ["--classes", "'0-\uff19'"]),
    "classes-too-many-digits": (["--classes", "9" * 5000], ["--classes", "(5000 digits)",
                                                              "accepted 0-9"]),
    # Flags `figures` does not use are refused when given (SAMPLE_BASE gives --classes).
    "figures-scale": (["figures", "--scale", "4"],
                      ["--scale: not used by 'figures' (accepted by the sampling command)"]),
    "figures-classes": (["figures", "--classes", "0-9"], ["--classes: not used by 'figures'"]),
    "figures-no-gif": (["figures", "--no-gif"], ["--no-gif: not used by 'figures'"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_bad_input(case, bad, capsys):
    argv, expected = SAMPLE_CASES[case]
    base = SAMPLE_BASE
    if argv[:1] == ["figures"] and "--classes" not in argv:  # `figures` refuses --classes.
        base = [a for a in base if a not in ("--classes", "0,1")]
    rc = cli.run(load_script("sample.py").main, fill(base + argv, bad))
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.err, fill(expected, bad))
    assert captured.out == ""
    if case != "out-under-a-file":
        # Arguments are validated before anything is written (checkpoint errors aside).
        assert not (bad["out"] / "sample" / "grid.png").exists()


def test_sample_refuses_to_write_non_finite_images(bad, capsys, monkeypatch):
    def nan_images(key, pipe, labels, scale, **kwargs):
        return jnp.full((len(labels), 28, 28, 1), jnp.nan)

    monkeypatch.setattr(pipeline, "generate", nan_images)
    argv = fill(SAMPLE_BASE + ["--no-gif", "--out", "{out}/nan"], bad)
    rc = cli.run(load_script("sample.py").main, argv)
    err = capsys.readouterr().err.splitlines()[-1]  # After the progress bar.
    assert_one_line_error(rc, err, ["non-finite values in 2 of 2 images", "nothing written"])
    assert not list((bad["out"] / "nan").glob("*"))


@pytest.mark.parametrize("reference, expected", [
    (b"not an npz file", "unreadable"),
    ({"mu": np.zeros(2), "cov": np.eye(2)}, "has no mu_0"),  # Overall statistics only.
    ({**{f"{s}{c}": v for c in ("", "_0", "_1") for s, v in (("mu", np.zeros(2)),
                                                             ("cov", np.eye(2)))},
      "cov_1": -np.eye(2)}, "ref['cov_1']: has negative eigenvalues"),
    ({**{f"{s}{c}": v for c in ("", "_0", "_1") for s, v in (("mu", np.zeros(2)),
                                                             ("cov", np.eye(2)))},
      "cov_0": np.full((2, 2), np.nan)}, "ref['cov_0']: contain NaN or inf"),
])
def test_sample_reads_evaluator_statistics_before_sampling(reference, expected, bad, capsys,
                                                           monkeypatch, tmp_path):
    from jaxguide import training

    ck = tmp_path / "ck"
    shutil.copytree(bad["ck"], ck)
    cfg = get_config("evaluator", preset="tiny")
    variables = make_model(cfg.model, cfg.kwargs).init(KEY, jnp.zeros((1, 28, 28, 1)))
    checkpoint.save_model(ck / "evaluator", variables,
                          {**training.model_metadata(cfg, (28, 28, 1)), "step": 0})
    if isinstance(reference, bytes):
        (ck / "evaluator" / metrics.REFERENCE_FILE).write_bytes(reference)
    else:
        np.savez(ck / "evaluator" / metrics.REFERENCE_FILE, **reference)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before reading the evaluator's statistics")

    monkeypatch.setattr(pipeline, "generate", no_sampling)
    argv = fill(SAMPLE_BASE + ["--evaluate", "--per-class", "2", "--out", "{out}/ev"], bad)
    rc = cli.run(load_script("sample.py").main, argv + ["--checkpoint-dir", str(ck)])
    assert_one_line_error(rc, capsys.readouterr().err, [metrics.REFERENCE_FILE, expected])


def test_sample_write_failure_names_out_and_the_file(bad, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "generate",
                        lambda key, pipe, labels, scale, **kw: jnp.zeros((len(labels), 28, 28, 1)))
    out = bad["out"] / "blocked"
    (out / "grid.png").mkdir(parents=True)  # A folder where the grid goes.
    rc = cli.run(load_script("sample.py").main,
                 fill(SAMPLE_BASE + ["--no-gif", "--out", str(out)], bad))
    err = capsys.readouterr().err.splitlines()[-1]
    assert_one_line_error(rc, err, [f"--out {out}: cannot write {out / 'grid.png'}"])
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"]  # Nothing half-written.


def test_sample_batch_never_exceeds_the_images_asked_for(bad, capsys, monkeypatch):
    batches = []

    def record(key, pipe, labels, scale, **kwargs):
        batches.append(len(labels))
        return jnp.zeros((len(labels), 28, 28, 1))

    monkeypatch.setattr(pipeline, "generate", record)
    argv = fill(SAMPLE_BASE + ["--batch-size", "4096", "--no-gif", "--out", "{out}/bs"], bad)
    assert cli.run(load_script("sample.py").main, argv) == 0, capsys.readouterr().err
    assert batches == [2]


# ------------------------------------------------------------------------ train.py

# A data dir that does not exist: argument errors must be reported before data is read.
TRAIN_BASE = ["denoiser", "--workdir", "{workdir}/run", "--data-dir", "{missing}",
              "--config", "tiny", "--no-progress"]

TRAIN_CASES = {
    "steps-0": (["--steps", "0"], ["--steps", "got 0", "accepted an integer >= 1"]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "got 0", ">= 1"]),
    "lr-0": (["--lr", "0"], ["--lr", "got 0.0", "accepted a number in [1.2e-38, 1)"]),
    "lr-nan": (["--lr", "nan"], ["--lr", "got nan", "accepted a number in [1.2e-38, 1)"]),
    "lr-5": (["--lr", "5"], ["--lr", "got 5.0", "[1.2e-38, 1)"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "got -1", ">= 0"]),
    "ckpt-every-0": (["--ckpt-every", "0"], ["--ckpt-every", "got 0", ">= 1"]),
    "model-bogus": (["--model", "bogus"], ["--model", "'bogus'", "accepted unet, seed"]),
    "model-seed-for-classifier": (["classifier", "--model", "seed"],
                                  ["--model", "'seed'", "'classifier'", "accepted resnet, tutorial"]),
    "data-dir-missing": ([], ["--data-dir", "does-not-exist", "not found"]),
    "data-dir-a-file": (["--data-dir", "{file}"], ["--data-dir", "a-file", "not a directory"]),
    "data-dir-corrupt-idx": (["--data-dir", "{corrupt_idx}"],
                             ["--data-dir", "train-images-idx3-ubyte", "bad magic number"]),
    "epochs-negative": (["--epochs", "-1"], ["--epochs", "got -1.0", "> 0"]),
    "epochs-inf": (["--epochs", "inf"], ["--epochs", "got inf", "finite"]),
    "steps-and-epochs": (["--steps", "5", "--epochs", "1"], ["--epochs", "--steps", "not both"]),
    "devices-0": (["--devices", "0"], ["--devices", "got 0", "accepted 1..1"]),
    "devices-too-many": (["--devices", "5"], ["--devices", "got 5", "accepted 1..1", "cpu"]),
    "num-processes-0": (["--num-processes", "0"], ["--num-processes", "got 0", ">= 1"]),
    "process-id-out-of-range": (["--num-processes", "2", "--process-id", "2"],
                                ["--process-id", "got 2", "accepted 0..1"]),
    "workdir-under-a-file": (["--workdir", "{file}/run"], ["--workdir", "a-file/run",
                                                           "not writable"]),
    "epochs-beyond-int32-steps": (["--data-dir", "{tiny_mnist}", "--epochs", "1e306"],
                                  ["--epochs", "got 1e+306", "accepted at most 2147483647 steps"]),
    "batch-size-beyond-the-data": (["--data-dir", "{tiny_mnist}", "--batch-size", "100"],
                                   ["--batch-size", "got 100", "at most the 64 training images"]),
    "workdir-empty": (["--workdir", ""], ["--workdir", "got ''", "accepted a folder path"]),
    "data-dir-empty": (["--data-dir", ""], ["--data-dir", "got ''", "accepted a folder path"]),
    "workdir-name-too-long": (["--workdir", "{empty}/new/" + "w" * 300],
                              ["--workdir", "an unusable path"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_bad_input(case, bad, capsys):
    argv, expected = TRAIN_CASES[case]
    argv = fill(argv, bad)
    base = fill(TRAIN_BASE, bad)
    if argv[:1] == ["classifier"]:  # another task
        base, argv = ["classifier"] + base[1:], argv[1:]
    rc = cli.run(load_script("train.py").main, base + argv)
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.err, fill(expected, bad))
    assert not (bad["workdir"] / "run" / "checkpoints").exists()


# argparse's own errors (a type or a choice): exit 2 with its usage line and one error line.
ARGPARSE_CASES = [
    ("sample.py", ["--per-class", "abc"], "argument --per-class: invalid int value: 'abc'"),
    ("sample.py", ["--steps", "1.5"], "argument --steps: invalid int value: '1.5'"),
    ("sample.py", ["--scale", "big"], "argument --scale: invalid float value: 'big'"),
    ("sample.py", ["smaple"], "argument command: invalid choice: 'smaple'"),
    ("sample.py", ["--debu"], "unrecognized arguments: --debu"),  # No abbreviations.
    # An unknown flag is named first, before its value can be taken for the optional command.
    ("sample.py", ["--per-clas", "4"],
     "unrecognized arguments: --per-clas (did you mean --per-class?)"),
    ("train.py", ["--stesp", "4", "denoiser", "--workdir", "w"],
     "unrecognized arguments: --stesp (did you mean --steps?)"),
    ("train.py", ["bogus", "--workdir", "w"], "argument task: invalid choice: 'bogus'"),
    ("train.py", ["denoiser"], "the following arguments are required: --workdir"),
    ("train.py", ["denoiser", "--workdir", "w", "--lr", "fast"],
     "argument --lr: invalid float value: 'fast'"),
]


@pytest.mark.parametrize("script, argv, expected", ARGPARSE_CASES,
                         ids=[f"{s}-{' '.join(a)}" for s, a, _ in ARGPARSE_CASES])
def test_argparse_errors(script, argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(load_script(script).main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage:") and "error: " + expected in lines[-1], err


# ------------------------------------------------------------------------ real processes


SUBPROCESS_CASES = [
    ("sample.py", ["--scale", "nan", "--out", "{out}/p1"], ["--scale", "got nan"]),
    ("sample.py", ["--checkpoint-dir", "{empty}", "--out", "{out}/p2"],
     ["--checkpoint-dir", "no denoiser/"]),
    ("train.py", ["denoiser", "--workdir", "{workdir}/p3", "--model", "bogus"],
     ["--model", "'bogus'", "accepted unet, seed"]),
    # Must run before JAX starts, so only in a new process: no cluster to detect here.
    ("sample.py", ["--distributed", "--out", "{out}/p5"],
     ["--distributed", "coordinator_address", "pass --coordinator-address"]),
]


@pytest.mark.parametrize("script, argv, expected", SUBPROCESS_CASES,
                         ids=[f"{s}-{a[0]}" for s, a, _ in SUBPROCESS_CASES])
def test_subprocess_exit_status_2_without_traceback(script, argv, expected, bad):
    proc = run_cli(script, *fill(argv, bad), timeout=240)
    assert proc.stdout == ""
    assert_one_line_error(proc.returncode, proc.stderr, fill(expected, bad))


def test_debug_shows_the_traceback(bad):
    proc = run_cli("sample.py", "--steps", "0", "--out", f"{bad['out']}/p4", "--debug",
                   timeout=240)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: --steps: got 0, accepted an integer >= 1 and <= 100000" in proc.stderr


# ------------------------------------------------------------------------ Python API


def _score(x, t):
    return -x


def _log_probs(x, t):
    return jnp.zeros((x.shape[0], 10))


KEY = jax.random.key(0)

API_CASES = {
    # id: (call, exception type, regex the message must match)
    "sample-n_steps-0": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=0),
                         ValueError, r"n_steps: got 0, accepted an integer >= 1"),
    "sample-n_steps-float": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2.5),
                             ValueError, r"n_steps: got 2\.5"),
    "sample-shape-empty": (lambda: sample(KEY, _score, VPSDE(), (), n_steps=2),
                           ValueError, r"shape: got \(\), accepted"),
    "sample-shape-negative": (lambda: sample(KEY, _score, VPSDE(), (2, -4), n_steps=2),
                              ValueError, r"shape: got \(2, -4\)"),
    "sample-shape-int": (lambda: sample(KEY, _score, VPSDE(), 3, n_steps=2),
                         ValueError, r"shape: got 3"),
    "sample-method": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2, method="rk4"),
                      ValueError, r"method: got 'rk4', accepted euler_maruyama"),
    "sample-key-int": (lambda: sample(0, _score, VPSDE(), (2, 4), n_steps=2),
                       TypeError, r"key: expected a typed key"),
    "sample-key-raw": (lambda: sample(jax.random.PRNGKey(0), _score, VPSDE(), (2, 4), n_steps=2),
                       TypeError, r"key: expected a typed key"),
    "sample-indices": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2,
                                      indices=jnp.arange(3)),
                       ValueError, r"indices: expected shape \(2,\)"),
    "sample-score-shape": (lambda: sample(KEY, lambda x, t: x.sum(-1), VPSDE(), (2, 4), n_steps=2),
                           ValueError, r"score_fn: returned shape \(2,\) for x of shape \(2, 4\), "
                           r"accepted the shape of x"),
    "sample-n_steps-huge": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=10**12),
                            ValueError, r"n_steps: got 1000000000000, accepted an integer >= 1 "
                            r"and <= 2147483646"),
    "sample-shape-huge": (lambda: sample(KEY, _score, VPSDE(), (2**31, 4), n_steps=2),
                          ValueError, r"shape: got \(2147483648, 4\), 8589934592 elements; "
                          r"accepted at most 2147483647"),
    "sample-denoise_last-string": (lambda: sample(KEY, _score, VPSDE(), (2, 4), n_steps=2,
                                                  denoise_last="no"),
                                   TypeError, r"denoise_last: got 'no', accepted True or False"),
    "sample-score-tuple": (lambda: sample(KEY, lambda x, t: (x, x), VPSDE(), (2, 4), n_steps=2),
                           TypeError, r"score_fn: returned a tuple for x of shape \(2, 4\), "
                           r"accepted an array of the shape of x"),
    "add_scores-term-shape": (
        lambda: sample(KEY, add_scores(_score, lambda x, t: x[:1]), VPSDE(), (2, 4), n_steps=2),
        ValueError, r"score_fns\[1\]: returned shape \(1, 4\) for x of shape \(2, 4\)"),
    "guidance-score-shape": (
        lambda: sample(KEY, classifier_guidance(lambda x, t: x[:1], _log_probs, 1, 1.0),
                       VPSDE(), (2, 4), n_steps=2),
        ValueError, r"score_fn: returned shape \(1, 4\) for x of shape \(2, 4\)"),
    "time_grid-t_min-above-T": (lambda: time_grid(VPSDE(), 3, t_min=2.0),
                                ValueError, r"t_min: got 2\.0, accepted \[1e-05, T=1\)"),
    "time_grid-n_steps-0": (lambda: time_grid(VPSDE(), 0),
                            ValueError, r"n_steps: got 0, accepted an integer >= 1"),
    "time_grid-sde": (lambda: time_grid(None, 2), TypeError, r"sde: expected a jaxguide\.VPSDE"),
    "time_grid-kind": (lambda: time_grid(VPSDE(), 2, kind="cosine"),
                       ValueError, r"kind: got 'cosine', accepted uniform"),
    "guidance-label-above-int32": (
        lambda: classifier_guidance(_score, _log_probs, np.array([2**32 + 3]), 1.0),
        ValueError, r"labels: got 4294967299, accepted \[0, 2147483647\]"),
    "guidance-label-python-int-above-int32": (
        lambda: classifier_guidance(_score, _log_probs, 2**32 + 3, 1.0),
        ValueError, r"labels: got 4294967299, accepted \[0, 2147483647\]"),
    "guidance-label-string": (lambda: classifier_guidance(_score, _log_probs, "3", 1.0),
                              ValueError, r"labels: got '3' \(<U1, shape \(\)\)"),
    "vpsde-std-list": (lambda: VPSDE().std([0.1, 0.2]),
                       TypeError, r"t: got \[0\.1, 0\.2\], accepted a real number or a real array"),
    "vpsde-std-string": (lambda: VPSDE().std("0.5"), TypeError, r"t: got '0\.5', accepted"),
    "vpsde-std-complex": (lambda: VPSDE().std(0.5 + 1j), TypeError, r"t: got \(0\.5\+1j\)"),
    "vpsde-std-none": (lambda: VPSDE().std(None), TypeError, r"t: got None, accepted"),
    "vpsde-drift-list": (lambda: VPSDE().drift([[1.0]], 0.5),
                         TypeError, r"x: got a list, accepted an array"),
    "vpsde-prior-dtype": (lambda: VPSDE().prior(KEY, (2,), "bogus"),
                          TypeError, r"dtype: got 'bogus', accepted a floating dtype"),
    "guidance-traced-float-labels": (
        lambda: jax.jit(lambda lab: classifier_guidance(_score, _log_probs, lab, 1.0)(
            jnp.ones((2, 4)), jnp.full(2, 0.5)))(jnp.array([1.5, 2.0])),
        ValueError, r"labels: got a traced array of dtype float32, accepted integer class"),
    "guidance-traced-complex-scale": (
        lambda: jax.jit(lambda sc: classifier_guidance(_score, _log_probs, 1, sc)(
            jnp.ones((2, 4)), jnp.full(2, 0.5)))(jnp.complex64(2)),
        ValueError, r"scale: got a traced array of dtype complex64, accepted a real number"),
    "guidance_term-per-class-output": (
        lambda: guidance_term(_log_probs, 1.0)(jnp.ones((2, 4)), jnp.full(2, 0.5)),
        ValueError, r"log_density_fn: returned shape \(2, 10\) for x of shape \(2, 4\), "
        r"accepted \(2,\)"),
    "score_from_eps-output-shape": (
        lambda: score_from_eps(lambda x, t: jnp.zeros(2), VPSDE())(jnp.ones((2, 4)),
                                                                   jnp.full(2, 0.5)),
        ValueError, r"eps_fn: returned shape \(2,\) for x of shape \(2, 4\)"),
    "score_from_eps-integer-x": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())(jnp.ones((2, 4), jnp.int32),
                                                        jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "score_from_eps-t-batch": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())(jnp.ones((2, 4)), jnp.full(3, 0.5)),
        ValueError, r"t: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
    "sample-complex-score": (
        lambda: sample(jax.random.key(0), lambda x, t: (-x).astype(jnp.complex64), VPSDE(), (1, 2),
                       n_steps=2),
        ValueError, r"score_fn: returned dtype complex64, accepted a real floating array"),
    "sample-traced-float-indices": (  # They were cast: two images got the same noise.
        lambda: jax.jit(lambda i: sample(jax.random.key(0), _score, VPSDE(), (2, 3), n_steps=2,
                                         indices=i))(jnp.array([0.7, -1.0])),
        ValueError, r"indices: got a traced array of dtype float32, accepted integers"),
    "guided-integer-x": (
        lambda: classifier_guidance(_score, _log_probs, 1, 1.0)(jnp.ones((2, 4), jnp.int32),
                                                                jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "guidance_term-integer-x": (
        lambda: guidance_term(lambda x, t: x.sum(1), 1.0)(jnp.ones((2, 4), jnp.int32),
                                                          jnp.full(2, 0.5)),
        ValueError, r"x: got dtype int32, accepted a floating dtype"),
    "guidance-ragged-labels": (
        lambda: classifier_guidance(_score, _log_probs, [[0], [1, 2]], 1.0),
        ValueError, r"labels: got \[\[0\], \[1, 2\]\], accepted integer class indices"),
    "score_from_eps-list-x": (
        lambda: score_from_eps(lambda x, t: x, VPSDE())([[0.0]], 0.5),
        TypeError, r"x: got a list, accepted an array"),
    "label_log_prob-num_classes-above-K": (  # Label 11 would only have made NaN.
        lambda: label_log_prob(_log_probs, 11, num_classes=12)(jnp.ones((2, 4)), jnp.full(2, 0.5)),
        ValueError, r"num_classes: got 12, but log_prob_fn returned 10 classes"),
    "TrainConfig-lr-zero-in-float32": (lambda: TrainConfig(lr=1e-320), ValueError,
                                       r"lr: got 1e-320, accepted a number in \[1\.2e-38, 1\)"),
    "export-step-float": (lambda: training.export("w", step=4.0), ValueError,
                          r"step: got 4\.0, accepted an integer >= 0"),
    "export-step-bool": (lambda: training.export("w", step=True), TypeError, r"step: got True"),
    "export-out-empty": (lambda: training.export("w", out=""), ValueError,
                         r"out: got '', accepted a non-empty path or None"),
    "export-workdir-none": (lambda: training.export(None), TypeError,
                            r"workdir: got None, accepted a path"),
    "guidance-label-10": (lambda: classifier_guidance(_score, _log_probs, jnp.array([1, 10]), 1.0,
                                                      num_classes=10),
                          ValueError, r"labels: got 10, accepted \[0, 9\]"),
    "guidance-label-negative": (lambda: classifier_guidance(_score, _log_probs, -1, 1.0),
                                ValueError, r"labels: got -1, accepted \[0, 2147483647\]"),
    "guidance-scale-negative": (lambda: classifier_guidance(_score, _log_probs, 1, -2.0),
                                ValueError, r"scale: got -2\.0, accepted a finite number >= 0"),
    "guidance-scale-nan": (lambda: classifier_guidance(_score, _log_probs, 1, float("nan")),
                           ValueError, r"scale: got nan, accepted"),
    "guidance-scale-nan-in-array": (
        lambda: classifier_guidance(_score, _log_probs, jnp.array([1, 2]), jnp.array([1.0, jnp.nan])),
        ValueError, r"scale: got .*accepted a finite number"),
    "guidance-labels-other-batch": (
        lambda: sample(KEY, classifier_guidance(_score, _log_probs, jnp.zeros(3, int), 1.0),
                       VPSDE(), (2, 4), n_steps=2),
        ValueError, r"labels: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
    "guidance-scale-other-batch": (
        lambda: sample(KEY, classifier_guidance(_score, _log_probs, 1, jnp.ones(3)),
                       VPSDE(), (2, 4), n_steps=2),
        ValueError, r"scale: got shape \(3,\) for a batch of 2 images, accepted \(\) or \(2,\)"),
    "vpsde-beta_min": (lambda: VPSDE(beta_min=-1.0), ValueError, r"beta_min must be .* > 0, got -1"),
    "vpsde-T": (lambda: VPSDE(T=0.0), ValueError, r"\bT must be a finite number > 0, got 0"),
    "vpsde-beta_max-below-min": (lambda: VPSDE(beta_min=2.0, beta_max=1.0),
                                 ValueError, r"beta_max must be >= beta_min"),
    "images-shape": (lambda: metrics.check_images(np.zeros((2, 28, 28))),
                     ValueError, r"images: got shape \(2, 28, 28\), accepted \(N, 28, 28, 1\)"),
    "images-empty": (lambda: metrics.check_images(np.zeros((0, 28, 28, 1))),
                     ValueError, r"images: got shape \(0, 28, 28, 1\)"),
    "images-nan": (lambda: metrics.check_images(np.full((1, 28, 28, 1), np.nan)),
                   ValueError, r"images: contain NaN or inf"),
    "images-range": (lambda: metrics.check_images(np.full((1, 28, 28, 1), 255.0)),
                     ValueError, r"images: values span \[255, 255\], accepted \[-1, 1\]"),
    "images-uint8": (lambda: metrics.check_images(np.zeros((1, 28, 28, 1), np.uint8)),
                     ValueError, r"images: got dtype uint8"),
    "frechet-dims": (lambda: metrics.frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4)),
                     ValueError, r"features: dimensions differ \(\(3,\) vs \(4,\)\)"),
    "frechet-one-sample": (lambda: metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3))),
                           ValueError, r"features: got shape \(1, 3\), accepted \(N, D\) with N >= 2"),
    "load_model-missing": (lambda: checkpoint.load_model("/nonexistent/jaxguide-model"),
                           CheckpointError, r"checkpoint dir /nonexistent/jaxguide-model: not found"),
    "load_pipeline-missing": (lambda: pipeline.load_pipeline("/nonexistent/jaxguide-ck"),
                              CheckpointError, r"/nonexistent/jaxguide-ck: not found"),
    "load_mnist-split": (lambda: data.load_mnist("validation", "/nonexistent"),
                         ValueError, r"split must be one of \('train', 'test'\), got 'validation'"),
    "load_mnist-missing-dir": (lambda: data.load_mnist("train", "/nonexistent/mnist"),
                               DataError, r"MNIST data dir /nonexistent/mnist not found"),
    "get_config-task": (lambda: get_config("generator"),
                        ValueError, r"task: got 'generator', accepted denoiser, classifier"),
    "get_config-preset": (lambda: get_config("denoiser", preset="huge"),
                          ValueError, r"preset: got 'huge', accepted default, tiny"),
    "get_config-model": (lambda: get_config("denoiser", "resnet"),
                         ValueError, r"model: got 'resnet' for task 'denoiser', accepted unet, seed"),
    "TrainConfig-batch_size-0": (lambda: TrainConfig(batch_size=0),
                                 ValueError, r"batch_size: got 0, accepted an integer >= 1"),
    "TrainConfig-lr-nan": (lambda: TrainConfig(lr=math.nan),
                           ValueError, r"lr: got nan, accepted a number in \[1\.2e-38, 1\)"),
    "TrainConfig-steps-float": (lambda: TrainConfig(steps=10.0),
                                ValueError, r"steps: got 10\.0, accepted an integer >= 1"),
    "make_model-bogus": (lambda: make_model("bogus"),
                         ValueError, r"model: got 'bogus', accepted unet"),
    "Evaluator-batch_size-0": (lambda: metrics.Evaluator("unused", batch_size=0),
                               ValueError, r"batch_size: got 0, accepted an integer >= 1"),
    "make_model-kwargs": (lambda: make_model("unet", {"colour": 3}),
                          ValueError, r"model_kwargs for 'unet'"),
}


test_api_bad_input = raising_cases(API_CASES)


def test_generate_checks_labels_before_sampling(tiny_checkpoints, monkeypatch):
    pipe = pipeline.load_pipeline(tiny_checkpoints)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the labels")

    monkeypatch.setattr(pipeline, "sample", no_sampling)
    with pytest.raises(ValueError, match=r"labels: got 10, accepted \[0, 9\]"):
        pipeline.generate(KEY, pipe, jnp.array([3, 10]), 4.0, n_steps=2)
    with pytest.raises(ValueError, match=r"scale: got -1\.0"):
        pipeline.generate(KEY, pipe, jnp.array([3]), -1.0, n_steps=2)


def test_zero_d_jax_numbers_are_accepted_as_numbers():
    """0-d JAX arrays count as the numbers they hold, like NumPy scalars."""
    x = sample(KEY, _score, VPSDE(beta_min=jnp.float32(0.1)), (2, 4), n_steps=jnp.array(2),
               clip=jnp.float32(5), t_min=jnp.float32(0.01), snr=jnp.float32(0.1),
               method="predictor_corrector")
    assert x.shape == (2, 4) and bool(jnp.all(jnp.isfinite(x)))
    assert sample(KEY, _score, VPSDE(), (2, 4), n_steps=2, denoise_last=jnp.bool_(False)
                  ).shape == (2, 4)
    grid = jax.jit(lambda t_min: time_grid(VPSDE(), 4, t_min))(0.01)  # A traced t_min.
    assert grid.shape == (5,) and float(grid[-1]) == pytest.approx(0.01)
    cfg = TrainConfig(lr=jnp.float32(1e-3), steps=jnp.int32(5))
    assert (cfg.lr, cfg.steps) == (pytest.approx(1e-3), 5) and type(cfg.steps) is int


def test_apply_fn_names_bad_models_variables_and_inputs(tiny_checkpoints):
    den, den_vars, _ = checkpoint.load_model(tiny_checkpoints / "denoiser")
    _, cls_vars, _ = checkpoint.load_model(tiny_checkpoints / "classifier")
    x = jnp.zeros((2, 28, 28, 1))
    cases = [
        (lambda: apply_fn("unet", den_vars), TypeError, r"model: got str, accepted a Flax module"),
        (lambda: apply_fn(den, None), TypeError, r"variables: got None, accepted a dict of "
         r"collections"),
        (lambda: apply_fn(den, cls_vars)(x, 0.5), ValueError,
         r"variables: do not fit the UNet \(Could not find parameter"),
        (lambda: jax.jit(apply_fn(den, cls_vars))(x, 0.5), ValueError,
         r"variables: do not fit the UNet"),
        (lambda: apply_fn(den, den_vars)(x, jnp.full(2, jnp.nan)), ValueError,
         r"t: got nan, accepted a finite time >= 0"),
        (lambda: apply_fn(den, den_vars)(x, -1.0), ValueError, r"t: got -1\.0, accepted"),
        (lambda: apply_fn(den, den_vars)(x.at[0, 0, 0, 0].set(jnp.inf), 0.5), ValueError,
         r"x: contains NaN or inf, accepted finite images"),
        # All zeros came out of integer variables.
        (lambda: apply_fn(den, jax.tree.map(lambda a: a.astype(jnp.int32), den_vars)),
         ValueError, r"variables: got dtype int32 at \['params'\]\[.*accepted floating arrays"),
        # Finite in float64, inf in the network's float32: only NaN came out.
        (lambda: apply_fn(den, den_vars)(x, np.float64(1e300)), ValueError,
         r"t: got 1e\+300, accepted a finite time >= 0 \(in float32\)"),
        # The input is right, the variables are another network's: the message says so.
        (lambda: apply_fn(make_model("classifier"), den_vars)(x, 0.5), ValueError,
         r"x: got shape \(2, 28, 28, 1\), accepted \(B, 28, 28, 4\) with B >= 1 \(C = 4: what "
         r"the variables were made for\)"),
    ]
    for call, exc_type, pattern in cases:
        with pytest.raises(exc_type, match=pattern):
            call()
    assert jax.jit(apply_fn(den, den_vars))(x, 0.5).shape == x.shape  # Traced: not checked.


def test_a_traced_negative_scale_makes_its_images_nan():
    guided = jax.jit(lambda sc: classifier_guidance(_score, _log_probs, 1, sc)(
        jnp.ones((2, 4)), jnp.full(2, 0.5)))
    assert bool(jnp.all(jnp.isnan(guided(jnp.array([-1.0, 1.0]))[0])))
    assert bool(jnp.all(jnp.isfinite(guided(jnp.array([-1.0, 1.0]))[1])))
