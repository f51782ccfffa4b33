"""Every bad input gets a clear error.

CLIs: one line `error: ...` on stderr naming the argument, the value and what is accepted;
exit status 2; no traceback (`--debug` shows it). Most cases call `cli.run(main, argv)` in
this process (the exit status it returns is the process's); a few run as real subprocesses
to check the process exit status. The Python API raises specific exception types whose
messages name the argument.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_script, run_cli
from test_data import write_dataset
from jaxguide import checkpoint, cli, data, metrics, pipeline, training
from jaxguide.configs import get_config
from jaxguide.nets import make_model

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
    "classes-letters": (["--classes", "abc"], ["--classes", "'abc'", "accepted"]),
    "classes-in-range-list": (["--classes", "0-3,12"], ["--classes", "got 12", "accepted 0-9"]),
    "per-class-0": (["--per-class", "0"], ["--per-class", "got 0", "accepted an integer >= 1"]),
    "steps-0": (["--steps", "0"], ["--steps", "got 0", "integer >= 1 and <="]),
    "scale-nan": (["--scale", "nan"], ["--scale", "got nan", "accepted a finite number >= 0"]),
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
    "devices-too-many": (["--devices", "5"], ["--devices", "got 5", "accepted 1..1", "cpu"]),
    "num-processes-0": (["--num-processes", "0"], ["--num-processes", "got 0", ">= 1"]),
    "process-id-out-of-range": (["--num-processes", "2", "--process-id", "2"],
                                ["--process-id", "got 2", "accepted 0..1"]),
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
    ck = tmp_path / "ck"
    shutil.copytree(bad["ck"], ck)
    cfg = get_config("evaluator", preset="tiny")
    variables = make_model(cfg.model, cfg.kwargs).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
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
    "init-from-missing": (["--init-from", "{missing}"], ["--init-from", "not found"]),
    "init-from-another-model": (["--init-from", "{ck}/classifier"],
                                ["--init-from", "holds the classifier", "accepted a model of"]),
    "init-from-empty": (["--init-from", ""], ["--init-from", "got ''"]),
    "warmup-frac-1": (["--warmup-frac", "1"], ["--warmup-frac", "got 1.0", "accepted a number in [0, 1)"]),
    "label-dropout-1": (["--label-dropout", "1"], ["--label-dropout", "got 1.0", "accepted a number in [0, 1)"]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "got 0", ">= 1"]),
    "lr-0": (["--lr", "0"], ["--lr", "got 0.0", "accepted a number in [1.2e-38, 1)"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "got -1", ">= 0"]),
    "ckpt-every-0": (["--ckpt-every", "0"], ["--ckpt-every", "got 0", ">= 1"]),
    "model-bogus": (["--model", "bogus"], ["--model", "'bogus'", "accepted unet, seed"]),
    "model-seed-for-classifier": (["classifier", "--model", "seed"],
                                  ["--model", "'seed'", "'classifier'", "accepted resnet, tutorial"]),
    "dataset-unknown": (["--dataset", "no_such_set"], ["--dataset", "'no_such_set'", "accepted mnist"]),
    "data-dir-missing": ([], ["--data-dir", "does-not-exist", "not found"]),
    "data-dir-a-file": (["--data-dir", "{file}"], ["--data-dir", "a-file", "not a directory"]),
    "data-dir-corrupt-idx": (["--data-dir", "{corrupt_idx}"],
                             ["--data-dir", "train-images-idx3-ubyte", "bad magic number"]),
    "epochs-negative": (["--epochs", "-1"], ["--epochs", "got -1.0", "> 0"]),
    "steps-and-epochs": (["--steps", "5", "--epochs", "1"], ["--epochs", "--steps", "not both"]),
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
