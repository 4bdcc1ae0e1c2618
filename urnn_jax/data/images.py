"""MNIST-like image datasets as pixel sequences (seed 000, Fig. 4).

Two ways to get the images, both to NumPy and neither needing TensorFlow:

* **tensorflow-datasets**, through ``tfds.data_source`` (random access over
  ArrayRecord files, decoded with NumPy/PIL). The dataset must already be
  prepared in ``data_dir`` in the ``array_record`` format; nothing is
  downloaded here. On a machine with internet and TensorFlow::

      tfds build mnist --file_format=array_record --data_dir=DATA_DIR

  or, without TensorFlow, from IDX files you already have:
  :func:`prepare_tfds_from_idx`.
* **IDX files**, the original distribution format
  (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``), raw or
  gzipped, read by :func:`read_idx`. Debian's ``dataset-fashion-mnist``
  package installs Fashion-MNIST in this form at
  ``/usr/share/datasets/fashion-mnist``.

:func:`load_images` picks a source (``"auto"``: a prepared tfds dataset in
``data_dir``, then IDX files under ``data_dir``, then the known system
directories) and raises :class:`DatasetNotFoundError`, saying how to provide
the data, when there is none.

:func:`permuted_sequences` turns a loaded dataset into the permuted pixel task:
a fixed pixel permutation drawn from a seed (:func:`pixel_permutation`), a
validation split held out from the training set, and sequences of 784 steps
with one feature. The sequences are kept as ``uint8``; :func:`to_inputs`
scales a batch to ``float32`` in [0, 1] with shape ``(batch, 784, 1)``.

Seeds, lengths, counts and subset sizes must be ints of the stated range
(TypeError for a non-int, ValueError out of range, naming the argument).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
from typing import Sequence

import numpy as np

from urnn_jax.rnn import check_int

DATASETS = ("mnist", "fashion_mnist")
SOURCES = ("auto", "tfds", "idx")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SEQUENCE_LENGTH = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

# System directories searched (after ``data_dir``) by ``source="auto"/"idx"``.
DEFAULT_IDX_DIRS = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}

# Where the IDX files come from, for the error message.
_IDX_HINTS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": (
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion), or on"
        " Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs"
        " /usr/share/datasets/fashion-mnist)"
    ),
}

# The file names of each split (prefix) and kind, as distributed.
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_KIND_STEM = {"images": "images-idx3-ubyte", "labels": "labels-idx1-ubyte"}


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not available from the requested source."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """A loaded image dataset: ``uint8`` images ``(N, 28, 28)``, ``int32`` labels."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str  # "tfds:<data_dir>" or "idx:<directory>"


@dataclasses.dataclass(frozen=True)
class SequenceSplits:
  """The permuted pixel task: ``uint8`` sequences ``(N, 784)``, ``int32`` labels.

  ``permutation`` is the pixel order (``x[:, k] = image.flat[permutation[k]]``).
  """

  train_x: np.ndarray
  train_y: np.ndarray
  valid_x: np.ndarray
  valid_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  permutation: np.ndarray
  source: str

  def sizes(self) -> dict[str, int]:
    return {"train": len(self.train_y), "validation": len(self.valid_y), "test": len(self.test_y)}


# --------------------------------------------------------------------------
# IDX files.

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {v.newbyteorder(">") if v.itemsize > 1 else v: k for k, v in _IDX_DTYPES.items()}


def _open(path: str, mode: str):
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  return opener(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (raw, or gzipped when the name ends in ``.gz``).

  Returns an array of the file's dtype and shape (native byte order).
  """
  path = os.fspath(path)
  with _open(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(
        f"read_idx: {path} is not an IDX file (bad magic number"
        f" {data[:4].hex() or '<empty>'}; expected 0000 <dtype> <ndim>). A"
        " gzipped file must end in .gz."
    )
  dtype = _IDX_DTYPES[data[2]]
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"read_idx: {path} is truncated (header).")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  count = int(np.prod(shape, dtype=np.int64))
  if len(data) - header != count * dtype.itemsize:
    raise ValueError(
        f"read_idx: {path} has {len(data) - header} data bytes, but its header"
        f" says shape {shape} of {dtype} ({count * dtype.itemsize} bytes)."
    )
  arr = np.frombuffer(data, dtype, count=count, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array) -> None:
  """Writes ``array`` as an IDX file (gzipped when the name ends in ``.gz``)."""
  path = os.fspath(path)
  array = np.asarray(array)
  big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  if big not in _IDX_CODES:
    raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code.")
  if array.ndim > 255:
    raise ValueError("write_idx: at most 255 dimensions.")
  header = bytes([0, 0, _IDX_CODES[big], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with _open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, dtype=big).tobytes())


def idx_file_names(split: str, kind: str) -> tuple[str, ...]:
  """The accepted file names of a split (train/test) and kind (images/labels)."""
  stem = f"{_SPLIT_PREFIX[split]}-{_KIND_STEM[kind]}"
  dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte (LeCun's unzipped names)
  return (stem, stem + ".gz", dotted, dotted + ".gz")


def find_idx_files(directory: str | os.PathLike) -> dict[str, str] | None:
  """The four IDX files in ``directory``, keyed ``{split}_{kind}``, or None."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return None
  found = {}
  for split in _SPLIT_PREFIX:
    for kind in _KIND_STEM:
      for fname in idx_file_names(split, kind):
        p = os.path.join(directory, fname)
        if os.path.isfile(p):
          found[f"{split}_{kind}"] = p
          break
      else:
        return None
  return found


def idx_search_dirs(name: str, data_dir: str | os.PathLike | None, *, include_defaults: bool = True) -> list[str]:
  """The directories searched for ``name``'s IDX files, in order."""
  _check_name(name)
  dirs = []
  if data_dir is not None:
    d = os.fspath(data_dir)
    torchvision = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    dirs += [
        d,
        os.path.join(d, name),
        os.path.join(d, name.replace("_", "-")),
        os.path.join(d, torchvision, "raw"),
    ]
  if include_defaults:
    dirs += list(DEFAULT_IDX_DIRS.get(name, ()))
  return list(dict.fromkeys(dirs))


def _validate_split(name, split, images, labels, where):
  if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
    raise ValueError(
        f"{name} {split} images from {where} have shape {images.shape} and"
        f" dtype {images.dtype}; expected (N, 28, 28) uint8."
    )
  labels = np.asarray(labels).reshape(-1)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"{name} {split} from {where}: {images.shape[0]} images but"
        f" {labels.shape[0]} labels."
    )
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f"{name} {split} labels from {where} are outside [0, {NUM_CLASSES}).")
  return images, labels.astype(np.int32)


def load_idx(name: str, directory: str | os.PathLike) -> ImageDataset:
  """Loads ``name`` from the IDX files in ``directory`` (raises if absent)."""
  _check_name(name)
  files = find_idx_files(directory)
  if files is None:
    raise DatasetNotFoundError(
        f"No IDX files for {name} in {os.fspath(directory)}: expected"
        f" {', '.join(idx_file_names('train', 'images')[:2])} and the"
        " train-labels/t10k-images/t10k-labels files."
    )
  arrays = {}
  for split in _SPLIT_PREFIX:
    images = read_idx(files[f"{split}_images"])
    labels = read_idx(files[f"{split}_labels"])
    arrays[split] = _validate_split(name, split, images, labels, files[f"{split}_images"])
  return ImageDataset(
      name=name,
      train_images=arrays["train"][0],
      train_labels=arrays["train"][1],
      test_images=arrays["test"][0],
      test_labels=arrays["test"][1],
      source=f"idx:{os.path.abspath(os.fspath(directory))}",
  )


# --------------------------------------------------------------------------
# tensorflow-datasets.


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - tfds is a core dependency
    raise ImportError(
        "The tfds source needs tensorflow-datasets: pip install tensorflow-datasets"
        " array_record (TensorFlow itself is not needed)."
    ) from e
  return tfds


def _read_chunk(source, keys):
  """Records ``keys`` of a tfds data source: batched reads when supported."""
  try:
    return source.__getitems__(keys)  # one ArrayRecord read per chunk (~2x faster)
  except TypeError:
    # tfds.testing.mock_data's data source has no working __getitems__.
    return [source[k] for k in keys]


def _source_to_numpy(source, name, split, where, chunk=2048):
  n = len(source)
  images = np.empty((n,) + IMAGE_SHAPE, np.uint8)
  labels = np.empty((n,), np.int64)
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    for i, ex in zip(keys, _read_chunk(source, keys)):  # PNGs decoded by PIL/OpenCV
      images[i] = np.asarray(ex["image"]).reshape(IMAGE_SHAPE)
      labels[i] = int(ex["label"])
  return _validate_split(name, split, images, labels, where)


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
  """Loads ``name`` with ``tfds.data_source`` from a prepared ``data_dir``.

  Never downloads. The dataset must have been prepared in the
  ``array_record`` format (``tfds build NAME --file_format=array_record``, or
  :func:`prepare_tfds_from_idx`); ``data_dir=None`` is tfds' default
  (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). TensorFlow is not
  imported.
  """
  _check_name(name)
  tfds = _tfds()
  data_dir = None if data_dir is None else os.fspath(data_dir)
  where = f"tfds:{data_dir or '<tfds default data_dir>'}"
  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises assorted errors for an unprepared dataset
    prepared = False
    try:
      prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # noqa: BLE001 - any failure here means "not usable"
      pass
    if not prepared:
      raise DatasetNotFoundError(
          f"{name} is not prepared for tensorflow-datasets in"
          f" {data_dir or 'the default tfds data_dir'}.\n" + how_to_provide(name, data_dir)
      ) from e
    raise DatasetNotFoundError(
        f"{name} is prepared in {data_dir or 'the default tfds data_dir'} but"
        f" cannot be opened as a random-access data source ({type(e).__name__}:"
        f" {e}). tfds.data_source needs the array_record format: rebuild with"
        f" `tfds build {name} --file_format=array_record`.\n" + how_to_provide(name, data_dir)
    ) from e
  train, test = sources
  train_images, train_labels = _source_to_numpy(train, name, "train", where)
  test_images, test_labels = _source_to_numpy(test, name, "test", where)
  return ImageDataset(name, train_images, train_labels, test_images, test_labels, where)


def prepare_tfds_from_idx(
    name: str, idx_dir: str | os.PathLike, data_dir: str | os.PathLike
) -> str:
  """Prepares ``name`` for ``tfds.data_source`` from local IDX files, without TensorFlow.

  Writes the registered tfds builder's dataset (same name, version and
  features) in the ``array_record`` format to ``data_dir``, taking the
  examples from the IDX files in ``idx_dir`` instead of downloading them.
  Returns the prepared dataset's directory. Afterwards
  ``load_tfds(name, data_dir)`` (or ``tfds.data_source(name,
  data_dir=data_dir)``) reads it.
  """
  _check_name(name)
  tfds = _tfds()
  import PIL.Image
  from tensorflow_datasets.image_classification import mnist as tfds_mnist

  dataset = load_idx(name, idx_dir)
  base = {"mnist": tfds_mnist.MNIST, "fashion_mnist": tfds_mnist.FashionMNIST}[name]

  def png(image):
    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format="png")
    return buf.getvalue()

  def examples(images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": png(image), "label": int(label)}

  with tfds.core.registered.skip_registration():

    class _FromIdx(base):  # pylint: disable=missing-class-docstring
      # No checksums to look up (nothing is downloaded); this also avoids
      # tfds' code_path lookup, which needs `importlib_resources` for a
      # builder defined outside tensorflow_datasets.
      code_path = None

      def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": examples(dataset.train_images, dataset.train_labels),
            "test": examples(dataset.test_images, dataset.test_labels),
        }

    _FromIdx.name = name

  builder = _FromIdx(data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
      )
  )
  return os.fspath(builder.data_dir)


# --------------------------------------------------------------------------
# One entry point.


def _check_name(name):
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {DATASETS}.")


def how_to_provide(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """How to make ``name`` available (the text of DatasetNotFoundError)."""
  _check_name(name)
  d = os.fspath(data_dir) if data_dir is not None else "DATA_DIR"
  dirs = idx_search_dirs(name, data_dir)
  return (
      f"Provide {name} in one of these ways (nothing is downloaded automatically):\n"
      f"  1. tensorflow-datasets, on a machine with internet and TensorFlow:\n"
      f"       tfds build {name} --file_format=array_record --data_dir={d}\n"
      f"     then copy {d}/{name} here and pass --data_dir={d} (--source=tfds).\n"
      f"  2. IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],"
      f" t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) from"
      f" {_IDX_HINTS[name]}, in --data_dir (--source=idx). Searched: {', '.join(dirs)}.\n"
      f"  3. To get the tfds format from IDX files without TensorFlow:\n"
      f"       python -c \"from urnn_jax.data import images;"
      f" images.prepare_tfds_from_idx('{name}', 'IDX_DIR', '{d}')\""
  )


def load_images(
    name: str = "mnist",
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
) -> ImageDataset:
  """Loads ``name`` ("mnist" or "fashion_mnist") as NumPy arrays.

  Args:
    name: the dataset.
    source: ``"tfds"`` (a prepared tfds dataset in ``data_dir``), ``"idx"``
      (IDX files in ``data_dir``, ``data_dir/NAME``, ... or the system
      directories in :data:`DEFAULT_IDX_DIRS`), or ``"auto"`` (tfds, then idx).
    data_dir: the tfds data directory and/or the IDX directory.

  Raises:
    DatasetNotFoundError: the dataset is in none of the places searched; the
      message says how to provide it.
  """
  _check_name(name)
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
  tried = []
  if source in ("auto", "tfds"):
    try:
      return load_tfds(name, data_dir)
    except DatasetNotFoundError as e:
      if source == "tfds":
        raise
      tried.append(str(e).split("\n")[0])
  for directory in idx_search_dirs(name, data_dir):
    if find_idx_files(directory) is not None:
      return load_idx(name, directory)
  tried.append(f"no IDX files in {', '.join(idx_search_dirs(name, data_dir))}")
  raise DatasetNotFoundError(
      f"Dataset {name} not found ({'; '.join(tried)}).\n" + how_to_provide(name, data_dir)
  )


# --------------------------------------------------------------------------
# The permuted pixel task.


_check_int = check_int  # urnn_jax.rnn's one integer-argument check


def pixel_permutation(seed: int, length: int = SEQUENCE_LENGTH) -> np.ndarray:
  """A fixed random permutation of ``range(length)`` determined by ``seed``.

  Raises:
    TypeError / ValueError: unless ``seed`` is an int >= 0 and ``length`` an
      int >= 1.
  """
  seed = _check_int("pixel_permutation", "seed", seed, 0)
  length = _check_int("pixel_permutation", "length", length, 1)
  return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(length)


def permutation_digest(perm) -> str:
  """A short hash identifying a permutation (recorded in results files)."""
  return hashlib.sha256(np.asarray(perm, np.int64).tobytes()).hexdigest()[:16]


def split_digest(splits: "SequenceSplits") -> str:
  """A short hash of the validation split and the training labels (recorded in results files).

  The split is drawn over the training set's storage order, which differs
  between sources (tfds stores the examples shuffled, IDX files in their
  original order): the same seed gives the same permutation everywhere, but
  the same split only for the same source. This digest tells them apart.
  """
  h = hashlib.sha256()
  for a in (splits.valid_x, splits.valid_y, splits.train_y):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def train_validation_split(num_train: int, num_validation: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Disjoint index arrays ``(train, validation)`` covering ``range(num_train)``."""
  fn = "train_validation_split"
  _check_int(fn, "num_train", num_train, 0)
  _check_int(fn, "num_validation", num_validation, 0)
  _check_int(fn, "seed", seed, 0)
  if not 0 < num_validation < num_train:
    raise ValueError(
        f"num_validation must be in (0, {num_train}) (the training set size),"
        f" got {num_validation}."
    )
  order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A11])).permutation(num_train)
  return np.sort(order[num_validation:]), np.sort(order[:num_validation])


def permuted_sequences(
    dataset: ImageDataset,
    *,
    seed: int = 0,
    num_validation: int = 5000,
    permute: bool = True,
    train_subset: int = 0,
    eval_subset: int = 0,
) -> SequenceSplits:
  """The permuted pixel task from a loaded dataset.

  Args:
    dataset: from :func:`load_images`.
    seed: determines the pixel permutation and the validation split (the
      split is over the dataset's storage order, which is shuffled in tfds
      and original in IDX files; see :func:`split_digest`).
    num_validation: examples held out from the training set.
    permute: False gives the unpermuted (sequential) pixel task.
    train_subset: keep only this many training examples (0: all).
    eval_subset: keep only this many validation and test examples (0: all).

  Raises:
    TypeError / ValueError: for a ``seed`` that is not an int >= 0, a
      ``num_validation`` not an int in (0, training set size), or subset
      sizes that are not ints >= 0.
  """
  fn = "permuted_sequences"
  _check_int(fn, "seed", seed, 0)
  _check_int(fn, "num_validation", num_validation, 1)
  train_subset = _check_int(fn, "train_subset", train_subset, 0)
  eval_subset = _check_int(fn, "eval_subset", eval_subset, 0)
  perm = pixel_permutation(seed) if permute else np.arange(SEQUENCE_LENGTH)
  train_idx, valid_idx = train_validation_split(len(dataset.train_labels), num_validation, seed)
  if train_subset:
    train_idx = train_idx[:train_subset]
  if eval_subset:
    valid_idx = valid_idx[:eval_subset]
  test_idx = np.arange(len(dataset.test_labels))
  if eval_subset:
    test_idx = test_idx[:eval_subset]

  def seq(images, idx):
    return np.ascontiguousarray(images[idx].reshape(len(idx), -1)[:, perm])

  return SequenceSplits(
      train_x=seq(dataset.train_images, train_idx),
      train_y=dataset.train_labels[train_idx],
      valid_x=seq(dataset.train_images, valid_idx),
      valid_y=dataset.train_labels[valid_idx],
      test_x=seq(dataset.test_images, test_idx),
      test_y=dataset.test_labels[test_idx],
      permutation=perm,
      source=dataset.source,
  )


def to_inputs(x):
  """``uint8`` sequences ``(..., T)`` to ``float32`` inputs ``(..., T, 1)`` in [0, 1].

  Works on NumPy and JAX arrays (use it inside a jitted step so that only
  bytes cross to the device).

  Raises:
    TypeError: unless ``x`` has dtype ``uint8`` (the pixel values in
      [0, 255] that :class:`SequenceSplits` holds). Other integer arrays
      could exceed 255, and floating ones are taken to be already scaled:
      dividing them by 255 again would silently give wrong inputs. (A dtype
      check: free under ``jit``.)
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None or np.dtype(dtype) != np.uint8:
    raise TypeError(
        "to_inputs: x must be a uint8 array of pixel values in [0, 255] (as in"
        f" SequenceSplits), got {type(x).__name__} with dtype {dtype}; float"
        " inputs already in [0, 1] need no conversion (add the feature axis"
        " with x[..., None])."
    )
  return (x[..., None] / 255.0).astype("float32")


__all__ = [
    "DATASETS",
    "DEFAULT_IDX_DIRS",
    "DatasetNotFoundError",
    "ImageDataset",
    "SEQUENCE_LENGTH",
    "SOURCES",
    "SequenceSplits",
    "find_idx_files",
    "how_to_provide",
    "idx_file_names",
    "idx_search_dirs",
    "load_idx",
    "load_images",
    "load_tfds",
    "permutation_digest",
    "permuted_sequences",
    "pixel_permutation",
    "prepare_tfds_from_idx",
    "read_idx",
    "split_digest",
    "to_inputs",
    "train_validation_split",
    "write_idx",
]
