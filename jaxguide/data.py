"""Datasets: what each is to the models (`DatasetSpec`), loading, stateless batching.

A dataset is named as tensorflow-datasets names it: `DATASETS` (mnist, fashion_mnist,
cifar10) are known here; any other tfds image-classification dataset (cifar100,
svhn_cropped, ...) is described by its tfds builder's info. Two sources, same output:

* **IDX files** (offline, numpy only), for MNIST and Fashion-MNIST: the four standard files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``)
  in a directory given as ``data_dir`` (``--data-dir`` on the command line) or
  through the ``JAXGUIDE_DATA_DIR`` environment variable.
* **tensorflow-datasets** (optional extra ``jaxguide[tfds]``), used when no data
  directory is given (and for every dataset without IDX files). It is imported lazily,
  read through ``tfds.data_source`` with ``download=False``: this module never touches
  the network.

Batching is stateless: the batch of global training step ``s`` is
``images[batch_indices(seed, s, n, batch_size)]``, a pure function of
``(seed, s)``, so a run resumed from a checkpoint at step ``s`` sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from jaxguide.checks import check_choice, check_int, check_pixels, invalid

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "ENV_DATA_DIR",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "SPLITS",
    "batch_indices",
    "epoch_permutation",
    "get_dataset",
    "load_dataset",
    "load_mnist",
    "read_idx",
    "steps_per_epoch",
]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is to the models: its tensorflow-datasets name, a title for messages,
    the image shape (H, W, C) and the class names (as many as classes). `idx`: whether it
    also comes as the four MNIST-layout IDX files; `tfds_keys`: its image and label features
    in tensorflow-datasets."""

    name: str
    title: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    idx: bool = False
    tfds_keys: tuple[str, str] = ("image", "label")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS = {spec.name: spec for spec in (
    DatasetSpec("mnist", "MNIST", (28, 28, 1), tuple("0123456789"), idx=True),
    DatasetSpec("fashion_mnist", "Fashion-MNIST", (28, 28, 1),
                ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"), idx=True),
    DatasetSpec("cifar10", "CIFAR-10", (32, 32, 3),
                ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")),
)}
ENV_DATA_DIR = "JAXGUIDE_DATA_DIR"
IMAGE_SHAPE, NUM_CLASSES = DATASETS["mnist"].image_shape, DATASETS["mnist"].num_classes
SPLITS = ("train", "test")


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a dataset: one of DATASETS, else that of the tensorflow-datasets
    image-classification dataset `name` (from its builder's info: nothing is downloaded)."""
    if not isinstance(name, str) or name in DATASETS or not name.strip():
        return DATASETS[check_choice("dataset", name, tuple(DATASETS))]
    return _tfds_spec(name)


@functools.cache
def _tfds_spec(name: str) -> DatasetSpec:
    accepted = f"{', '.join(DATASETS)} or a tensorflow-datasets image-classification dataset"
    try:
        import tensorflow_datasets as tfds  # lazy: optional extra

        info = tfds.builder(name).info
    except ImportError:
        raise invalid("dataset", f"{name!r} (tensorflow-datasets is not installed)",
                      f"{accepted} (pip install 'jaxguide[tfds]')") from None
    except Exception as e:  # DatasetNotFoundError and others.
        raise invalid("dataset", f"{name!r} ({type(e).__name__})", accepted) from None
    image, label = info.supervised_keys or ("image", "label")
    feats = info.features
    shape = tuple(getattr(feats[image], "shape", ())) if image in feats.keys() else ()
    names = getattr(feats[label], "names", None) if label in feats.keys() else None
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape) or not names:
        raise invalid("dataset", f"{name!r} (features {image}: {shape}, {label}: {names})",
                      f"{accepted}: fixed-size images (H, W, C) and class labels")
    return DatasetSpec(name, info.full_name, shape, tuple(names), tfds_keys=(image, label))

# split -> (images file, labels file), without the optional ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# magic -> (number of dimensions, description). Both are uint8 (type code 0x08).
_MAGIC_IMAGES = 0x00000803
_MAGIC_LABELS = 0x00000801
_IDX_KINDS = {
    _MAGIC_IMAGES: (3, "uint8 images"),
    _MAGIC_LABELS: (1, "uint8 labels"),
}


def _tfds_prepare_cmd(name: str, tfds_data_dir: str | os.PathLike | None) -> str:
    """The one-off shell command that prepares a dataset for ``tfds.data_source``."""
    dd = "" if tfds_data_dir is None else f", data_dir={os.fspath(tfds_data_dir)!r}"
    return (
        "python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder({name!r}, file_format='array_record'{dd}).download_and_prepare()\""
    )


class DataError(ValueError):
    """A data file (or data source) is missing, malformed or inconsistent.

    The message names the file (or source) and the problem, on one line.
    """


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed when the name ends in ``.gz``).

    Supported: magic ``0x00000803`` -> uint8 images of shape ``(n, rows, cols)``;
    magic ``0x00000801`` -> uint8 labels of shape ``(n,)``.

    Returns:
      A writable ``np.uint8`` array with the shape given by the header.

    Raises:
      TypeError: ``path`` is not a path (str or os.PathLike).
      DataError: the file is missing or unreadable, is not valid gzip, has an
        unknown magic number, is shorter than its header implies (truncated), or
        has bytes after the data (trailing garbage).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: got {path!r}, accepted a path (str or os.PathLike)")
    path = Path(path)
    return _parse_idx(path, _read_idx_bytes(path))


def _read_idx_bytes(path: Path) -> bytes:
    """The bytes of the file at `path`, gunzipped when its name ends in ``.gz``."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise DataError(f"IDX file {path} {what}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"IDX file {path}: cannot read ({e.strerror or e})") from e
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {path}: corrupt gzip data ({e})") from e
    return raw


def _parse_idx(path: Path, data: bytes) -> np.ndarray:
    """The array an IDX file's bytes hold (see `read_idx`); `path` is for the messages."""
    if len(data) < 4:
        raise DataError(f"IDX file {path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _IDX_KINDS:
        expected = ", ".join(f"0x{m:08x} ({d})" for m, (_, d) in _IDX_KINDS.items())
        hint = " (is it gzip data without a .gz name?)" if data[:2] == b"\x1f\x8b" else ""
        raise DataError(f"IDX file {path}: bad magic number 0x{magic:08x}; expected "
                        f"{expected}{hint}")
    ndim, _ = _IDX_KINDS[magic]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"IDX file {path}: truncated header ({len(data)} bytes, need "
                        f"{header_len} for {ndim} dimension(s))")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = math.prod(dims)  # Python ints: a forged header cannot overflow it.
    body_len = len(data) - header_len
    dims_str = "x".join(map(str, dims))
    if body_len < expected_len:
        raise DataError(f"IDX file {path}: truncated: header says {dims_str} = "
                        f"{expected_len} bytes of data, file has {body_len}")
    if body_len > expected_len:
        raise DataError(f"IDX file {path}: trailing garbage: {body_len - expected_len} bytes "
                        f"after the {dims_str} = {expected_len} bytes of data the header announces")
    arr = np.frombuffer(data, dtype=np.uint8, count=expected_len, offset=header_len)
    return arr.reshape(dims).copy()


def _find_idx(spec: DatasetSpec, data_dir: Path, base: str) -> Path:
    """Return ``data_dir/base`` or ``data_dir/base.gz`` (raw preferred)."""
    for name in (base, base + ".gz"):
        p = data_dir / name
        if p.is_file():
            return p
    raise DataError(f"{spec.title} file {base} (or {base}.gz) not found in {data_dir}")


def _load_idx_split(spec: DatasetSpec, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) and labels (N,) of one split from IDX files."""
    if not data_dir.is_dir():
        what = "is not a directory" if data_dir.exists() else "not found"
        raise DataError(f"{spec.title} data dir {data_dir} {what}")
    images_base, labels_base = _IDX_FILES[split]
    images_path = _find_idx(spec, data_dir, images_base)
    labels_path = _find_idx(spec, data_dir, labels_base)
    images, labels = read_idx(images_path), read_idx(labels_path)
    for path, arr, magic in ((images_path, images, _MAGIC_IMAGES),
                             (labels_path, labels, _MAGIC_LABELS)):
        if arr.ndim != _IDX_KINDS[magic][0]:
            raise DataError(f"{spec.title} file {path}: expected {_IDX_KINDS[magic][1]} (magic "
                            f"0x{magic:08x}), found an array of shape {arr.shape}")
    h, w, _ = spec.image_shape
    if images.shape[1:] != (h, w):
        raise DataError(f"{spec.title} file {images_path}: images are {images.shape[1]}x"
                        f"{images.shape[2]}, expected {h}x{w}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{spec.title} count mismatch: {images_path} has {images.shape[0]} "
                        f"images but {labels_path} has {labels.shape[0]} labels")
    if not len(images):
        raise DataError(f"{spec.title} data dir {data_dir}: the {split} split holds 0 images "
                        f"({images_path}), accepted at least 1")
    _check_labels(spec, labels, str(labels_path))
    return images, labels


def _check_labels(spec: DatasetSpec, labels: np.ndarray, where: str) -> None:
    """Labels (N,) must be classes of `spec`, 0..num_classes - 1."""
    bad = labels[(labels < 0) | (labels >= spec.num_classes)]
    if bad.size:
        raise DataError(f"{spec.title} labels in {where}: {bad.size} label(s) outside "
                        f"0..{spec.num_classes - 1} (first: {int(bad[0])})")


# -------------------------------------------------------------------------- tfds


def _load_tfds_split(spec: DatasetSpec, split: str, tfds_data_dir: str | os.PathLike | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) and labels (N,) through ``tfds.data_source``."""
    files = f"the folder of the {spec.title} IDX files, or " if spec.idx else ""
    try:
        import tensorflow_datasets as tfds  # lazy: optional extra
    except ImportError as e:
        why = "is not installed" if e.name == "tensorflow_datasets" else f"fails to import ({e})"
        raise invalid("data_dir", f"none (nor {ENV_DATA_DIR}) to read {spec.title}, and "
                      f"tensorflow-datasets {why}", f"{files}`pip install 'jaxguide[tfds]'`",
                      DataError) from e

    where = str(tfds_data_dir) if tfds_data_dir is not None else "the default TFDS data dir"
    try:
        # download=False: never the network. array_record: random access without
        # TensorFlow (tfds' default file format for a given data_dir is tfrecord,
        # which data_source cannot read).
        ds = tfds.data_source(
            spec.name,
            split=split,
            download=False,
            data_dir=None if tfds_data_dir is None else os.fspath(tfds_data_dir),
            builder_kwargs={"file_format": "array_record"},
        )
        n = len(ds)
    except Exception as e:  # tfds raises KeyError/NotImplementedError/ValueError/...
        reason = (str(e).strip().splitlines() or [""])[0]
        raise invalid("data_dir", f"none, and tensorflow-datasets has no prepared {spec.name!r} "
                      f"{split} split (array_record) in {where} ({type(e).__name__}: {reason})",
                      f"{files}that split, prepared once (with TensorFlow, in jaxguide[tfds]) by "
                      f"{_tfds_prepare_cmd(spec.name, tfds_data_dir)}", DataError) from e

    images = np.empty((n, *spec.image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    # Record by record: tfds' mock data source breaks __getitems__, and decoding
    # (one PNG per record) dominates anyway.
    for i in range(n):
        rec = ds[i]
        img = np.asarray(rec[spec.tfds_keys[0]])
        if img.size != images[i].size or img.shape[:2] != spec.image_shape[:2]:
            raise DataError(f"{spec.title} (tfds {split}) record {i}: image shape {img.shape}, "
                            f"expected {spec.image_shape}")
        images[i] = img.reshape(spec.image_shape)
        labels[i] = int(rec[spec.tfds_keys[1]])
    _check_labels(spec, labels, f"tfds {spec.name} {split}")
    return images, labels


# ------------------------------------------------------------------------ public


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    tfds_data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a dataset (a name in DATASETS) into memory.

    Args:
      name: the dataset, e.g. ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``.
      split: ``"train"`` or ``"test"``.
      data_dir: directory holding the four IDX files (raw or ``.gz``), for datasets that
        come as such (MNIST, Fashion-MNIST). If None, MNIST also looks at the
        ``JAXGUIDE_DATA_DIR`` environment variable (when set and non-empty); otherwise
        the split is read through tensorflow-datasets (never downloading).
      tfds_data_dir: TFDS data directory for the tensorflow-datasets path
        (None: TFDS' default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      ``(images, labels)``: images ``float32 (N, H, W, C)`` in ``[-1, 1]``
      (``x / 127.5 - 1`` of the uint8 pixels), labels ``int32 (N,)`` in
      ``0..num_classes - 1``.

    Raises:
      ValueError: an unknown ``name``, ``split`` not ``"train"`` or ``"test"``, a
        directory ``""`` or blank, or a ``data_dir`` for a dataset without IDX files.
      TypeError: ``data_dir`` or ``tfds_data_dir`` is neither a path nor None.
      DataError: a file is missing or malformed, the counts disagree, a split
        holds no images, or the tensorflow-datasets source is unavailable
        (one-line message saying what to do). A directory taken from
        ``JAXGUIDE_DATA_DIR`` is named as ``JAXGUIDE_DATA_DIR='<path>': ...``.
    """
    spec = get_dataset(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS!r}, got {split!r}")
    _check_dir("data_dir", data_dir)
    _check_dir("tfds_data_dir", tfds_data_dir)
    if data_dir is not None and not spec.idx:
        raise invalid("data_dir", f"{os.fspath(data_dir)!r}, but {spec.title} has no IDX files",
                      "None (it is read through tensorflow-datasets)")
    env = os.environ.get(ENV_DATA_DIR, "") if data_dir is None and name == "mnist" else ""
    if env:
        if not env.strip():
            raise invalid(ENV_DATA_DIR, repr(env), "a folder path, or unset or empty", DataError)
        try:
            images, labels = _load_idx_split(spec, split, Path(env))
        except DataError as e:
            raise DataError(f"{ENV_DATA_DIR}={env!r}: {e}") from e
    elif data_dir is not None:
        images, labels = _load_idx_split(spec, split, Path(data_dir))
    else:
        images, labels = _load_tfds_split(spec, split, tfds_data_dir)
    return _to_model_arrays(spec, images, labels)


def load_mnist(split: str, data_dir: str | os.PathLike | None = None, *,
               tfds_data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`load_dataset("mnist", ...)`: images float32 (N, 28, 28, 1), labels int32 (N,) in 0..9;
    ``JAXGUIDE_DATA_DIR`` names the IDX files' folder when `data_dir` is None."""
    return load_dataset("mnist", split, data_dir, tfds_data_dir=tfds_data_dir)


def check_dataset(dataset, num_classes: int | None = None, min_test_per_class: int = 0):
    """Checks a `((train_images, train_labels), (test_images, test_labels))` dataset as
    `load_mnist` returns it; returns it as NumPy arrays.

    Images: floating (N, H, W, C), N >= 1, the same (H, W, C) in both splits, finite, in
    [-1, 1]. Labels: integers (N,) in [0, num_classes) (>= 0 without `num_classes`); every
    class at least `min_test_per_class` times in the test split. Raises ValueError or
    TypeError naming the split and the array.
    """
    form = "((train_images, train_labels), (test_images, test_labels))"
    try:
        (x_train, y_train), (x_test, y_test) = dataset
    except (TypeError, ValueError):
        raise invalid("dataset", type(dataset).__name__, form, TypeError) from None
    hi = num_classes or np.iinfo(np.int32).max
    out = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y = np.asarray(x), np.asarray(y)
        images, labels = f"dataset: {split} images", f"dataset: {split} labels"
        if x.dtype.kind != "f" or x.ndim != 4 or not len(x):
            raise invalid(images, f"{x.dtype} {x.shape}",
                          "floating (N, H, W, C) with N >= 1, scaled to [-1, 1]")
        if out and x.shape[1:] != out[0][0].shape[1:]:
            raise invalid(images, str(x.shape),
                          f"the (H, W, C) of the train images, {out[0][0].shape[1:]}")
        check_pixels(images, x)
        if y.dtype.kind not in "iu" or y.shape != x.shape[:1]:
            raise invalid(labels, f"{y.dtype} {y.shape}",
                          f"integers ({len(x)},), one per {split} image")
        if y.min() < 0 or y.max() >= hi:
            raise invalid(labels, f"values in [{y.min()}, {y.max()}]", f"[0, {hi - 1}]")
        out.append((x, y))
    counts = np.bincount(out[1][1], minlength=num_classes or 0)
    if min_test_per_class and counts.min() < min_test_per_class:
        raise ValueError(f"dataset: test labels: class {counts.argmin()} has {counts.min()} "
                         f"examples, accepted >= {min_test_per_class} per class")
    return tuple(out)


def _check_dir(name: str, value) -> None:
    """Checks that `value` is None or a non-empty path (str or os.PathLike)."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: got {value!r}, accepted a path (str or os.PathLike) or None")
    if value is not None and not os.fspath(value).strip():
        raise ValueError(f"{name}: got {value!r}, accepted a non-empty path or None")


def _to_model_arrays(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W[, C]) -> float32 (N, H, W, C) in [-1, 1]; labels -> int32 (N,)."""
    x = images.reshape((len(images), *spec.image_shape)).astype(np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x, labels.astype(np.int32)


# ---------------------------------------------------------------------- batching


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of full batches per epoch (remainder dropped): ``n // batch_size``.

    Raises:
      ValueError or TypeError: ``n`` is not an integer >= 1, or ``batch_size`` not one in
        ``[1, n]``.
    """
    n = check_int("n", n, 1)
    return n // check_int("batch_size", batch_size, 1, n)


@functools.lru_cache(maxsize=4)
def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)
    return perm


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation of ``0..n-1``.

    A pure function of ``(seed, epoch, n)``, drawn from
    ``np.random.default_rng([seed, epoch])`` (reproducible for a given NumPy
    version).

    Returns:
      ``int64 (n,)`` array holding each of ``0..n-1`` exactly once.
    """
    seed, epoch, n = check_int("seed", seed, 0), check_int("epoch", epoch, 0), check_int("n", n, 0)
    return _cached_permutation(seed, epoch, n).copy()


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Example indices of the batch for global training step ``step``.

    ``epoch = step // steps_per_epoch(n, batch_size)``; the batch is the
    ``(step % steps_per_epoch)``-th slice of ``batch_size`` entries of
    ``epoch_permutation(seed, epoch, n)``. The last ``n % batch_size`` entries of
    each epoch's permutation are dropped (a different subset each epoch). Use as
    ``images[batch_indices(seed, s, len(images), B)]``; being stateless, it makes
    resuming at any step exact.

    Returns:
      ``int64 (batch_size,)`` array of distinct indices in ``0..n-1``.

    Raises:
      ValueError: bad ``batch_size`` (``<= 0`` or ``> n``), ``n``, ``seed`` or
        ``step`` (negative).
    """
    spe = steps_per_epoch(n, batch_size)
    step, seed = check_int("step", step, 0), check_int("seed", seed, 0)
    epoch, pos = divmod(step, spe)
    perm = _cached_permutation(seed, epoch, int(n))
    return perm[pos * batch_size : (pos + 1) * batch_size].copy()
