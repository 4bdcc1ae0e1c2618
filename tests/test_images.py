"""Tests of urnn_jax.data.images: IDX files, the tfds path, the permuted pixel task."""

import gzip
import os

import numpy as np
import pytest

from urnn_jax.data import images

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def write_tiny_idx(directory, *, n_train=12, n_test=5, gz=True, seed=0, dotted=False):
  """Tiny MNIST-format IDX files; returns the arrays written."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  arrays = {
      ("train", "images"): rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      ("train", "labels"): rng.integers(0, 10, (n_train,), dtype=np.uint8),
      ("test", "images"): rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      ("test", "labels"): rng.integers(0, 10, (n_test,), dtype=np.uint8),
  }
  for (split, kind), arr in arrays.items():
    names = images.idx_file_names(split, kind)  # (stem, stem.gz, dotted, dotted.gz)
    name = names[(2 if dotted else 0) + (1 if gz else 0)]
    images.write_idx(os.path.join(directory, name), arr)
  return arrays


# ----------------------------------------------------------------------------
# IDX reader.


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_roundtrip(tmp_path, suffix, dtype):
  arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
  path = tmp_path / f"x-idx3{suffix}"
  images.write_idx(path, arr)
  out = images.read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 4)
  np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_matches_the_format_byte_for_byte(tmp_path, gz):
  # An MNIST label file written by hand: magic 0x00000801, count, labels.
  payload = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 2, 9])
  path = tmp_path / ("labels-idx1-ubyte" + (".gz" if gz else ""))
  path.write_bytes(gzip.compress(payload) if gz else payload)
  np.testing.assert_array_equal(images.read_idx(path), [7, 2, 9])


def test_read_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad"
  bad.write_bytes(b"\x1f\x8b\x08\x00garbage")  # gzip bytes without .gz
  with pytest.raises(ValueError, match="not an IDX file"):
    images.read_idx(bad)
  short = tmp_path / "short"
  short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x01\x02")
  with pytest.raises(ValueError, match="header says shape"):
    images.read_idx(short)


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_load_idx_directory(tmp_path, gz, dotted):
  arrays = write_tiny_idx(tmp_path / "fashion-mnist", gz=gz, dotted=dotted)
  # data_dir/<name with a dash> is searched, as are data_dir and data_dir/<name>.
  d = images.load_images("fashion_mnist", source="idx", data_dir=tmp_path)
  assert d.source == f"idx:{tmp_path / 'fashion-mnist'}"
  np.testing.assert_array_equal(d.train_images, arrays[("train", "images")])
  np.testing.assert_array_equal(d.test_labels, arrays[("test", "labels")])
  assert d.train_labels.dtype == np.int32


def test_load_idx_checks_shapes(tmp_path):
  write_tiny_idx(tmp_path)
  images.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))  # 5 images
  with pytest.raises(ValueError, match="5 images but 4 labels"):
    images.load_idx("mnist", tmp_path)


# ----------------------------------------------------------------------------
# tensorflow-datasets (no TensorFlow in this environment: these run without it).


def test_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    d = images.load_images("mnist", source="tfds", data_dir=tmp_path)
  assert d.source.startswith("tfds:")
  assert d.train_images.shape == (6, 28, 28) and d.train_images.dtype == np.uint8
  assert d.test_images.shape == (6, 28, 28)
  assert d.train_labels.shape == (6,) and 0 <= d.train_labels.min() and d.train_labels.max() < 10
  seq = images.permuted_sequences(d, num_validation=2)
  assert seq.sizes() == {"train": 4, "validation": 2, "test": 6}


def test_prepare_tfds_from_idx_and_read_back(tmp_path):
  """Real tfds-prepared array_record files, written and read without TensorFlow."""
  pytest.importorskip("tensorflow_datasets")
  arrays = write_tiny_idx(tmp_path / "idx", n_train=7, n_test=3)
  out = images.prepare_tfds_from_idx("mnist", tmp_path / "idx", tmp_path / "tfds")
  assert os.path.exists(os.path.join(out, "dataset_info.json"))
  d = images.load_images("mnist", source="auto", data_dir=tmp_path / "tfds")
  assert d.source == f"tfds:{tmp_path / 'tfds'}"  # auto prefers a prepared tfds dataset

  def pairs(imgs, labels):  # tfds stores the examples shuffled
    return sorted((im.tobytes(), int(l)) for im, l in zip(imgs, labels))

  assert pairs(d.train_images, d.train_labels) == pairs(arrays[("train", "images")], arrays[("train", "labels")])
  assert pairs(d.test_images, d.test_labels) == pairs(arrays[("test", "images")], arrays[("test", "labels")])


# ----------------------------------------------------------------------------
# Missing data.


def test_missing_dataset_says_how_to_provide_it(tmp_path, monkeypatch):
  monkeypatch.setattr(images, "DEFAULT_IDX_DIRS", {})  # ignore system copies
  for source in ("auto", "idx", "tfds"):
    with pytest.raises(images.DatasetNotFoundError) as info:
      images.load_images("fashion_mnist", source=source, data_dir=tmp_path)
    msg = str(info.value)
    assert "tfds build fashion_mnist --file_format=array_record" in msg
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
  with pytest.raises(images.DatasetNotFoundError, match="tfds build mnist"):
    images.load_images("mnist", source="auto", data_dir=tmp_path)
  assert issubclass(images.DatasetNotFoundError, FileNotFoundError)


def test_bad_arguments():
  with pytest.raises(ValueError, match="Unknown dataset"):
    images.load_images("cifar10")
  with pytest.raises(ValueError, match="Unknown source"):
    images.load_images("mnist", source="web")


# ----------------------------------------------------------------------------
# The permuted pixel task.


def test_pixel_permutation_is_a_fixed_bijection():
  p = images.pixel_permutation(0)
  assert p.shape == (784,)
  np.testing.assert_array_equal(np.sort(p), np.arange(784))
  np.testing.assert_array_equal(p, images.pixel_permutation(0))
  assert not np.array_equal(p, images.pixel_permutation(1))
  assert not np.array_equal(p, np.arange(784))
  assert images.permutation_digest(p) == images.permutation_digest(images.pixel_permutation(0))
  assert images.permutation_digest(p) != images.permutation_digest(images.pixel_permutation(1))


def test_permuted_sequences(tmp_path):
  write_tiny_idx(tmp_path, n_train=12, n_test=5)
  d = images.load_images("mnist", source="idx", data_dir=tmp_path)
  s = images.permuted_sequences(d, seed=3, num_validation=4)
  assert s.sizes() == {"train": 8, "validation": 4, "test": 5}
  assert s.train_x.shape == (8, 784) and s.train_x.dtype == np.uint8
  perm = images.pixel_permutation(3)
  np.testing.assert_array_equal(s.permutation, perm)
  np.testing.assert_array_equal(s.test_x[2], d.test_images[2].reshape(-1)[perm])
  # The validation split is held out of the training set: disjoint, and together all of it.
  train_idx, valid_idx = images.train_validation_split(12, 4, seed=3)
  assert not set(train_idx) & set(valid_idx) and len(set(train_idx) | set(valid_idx)) == 12
  np.testing.assert_array_equal(s.valid_x, d.train_images[valid_idx].reshape(4, -1)[:, perm])
  np.testing.assert_array_equal(s.train_y, d.train_labels[train_idx])
  # Subsets and the unpermuted variant.
  s2 = images.permuted_sequences(d, seed=3, num_validation=4, permute=False, train_subset=3, eval_subset=2)
  assert s2.sizes() == {"train": 3, "validation": 2, "test": 2}
  np.testing.assert_array_equal(s2.train_x[0], d.train_images[train_idx[0]].reshape(-1))
  x = images.to_inputs(s.train_x[:2])
  assert x.shape == (2, 784, 1) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() <= 1.0
  np.testing.assert_allclose(x[..., 0] * 255, s.train_x[:2], atol=1e-4)
  assert images.split_digest(s) == images.split_digest(images.permuted_sequences(d, seed=3, num_validation=4))
  assert images.split_digest(s) != images.split_digest(images.permuted_sequences(d, seed=4, num_validation=4))
  with pytest.raises(ValueError, match="num_validation"):
    images.permuted_sequences(d, num_validation=12)


def test_to_inputs_needs_uint8_pixels():
  # Issue 22: int32 pixels above 255 became inputs above 1, float inputs
  # already in [0, 1] were divided by 255 again, and complex ones lost their
  # imaginary part; to_inputs takes the uint8 pixels of SequenceSplits only.
  for bad in (np.full((2, 3), 1000, np.int32), np.full((2, 3), 0.5, np.float32), np.ones((2, 3)) * 1j):
    with pytest.raises(TypeError, match=rf"to_inputs: x must be a uint8 array.*dtype {bad.dtype}"):
      images.to_inputs(bad)
  with pytest.raises(TypeError, match="uint8"):
    images.to_inputs([[1, 2]])
  np.testing.assert_array_equal(images.to_inputs(np.full((1, 2), 255, np.uint8)), np.ones((1, 2, 1), np.float32))


def test_bad_seeds_lengths_and_counts_raise(tmp_path):
  # Issue 22: pixel_permutation(0, -1) returned [], a float seed was
  # truncated, and a negative subset size silently dropped examples.
  value_errors = [
      (lambda: images.pixel_permutation(0, -1), r"pixel_permutation: length must be >= 1, got length=-1"),
      (lambda: images.pixel_permutation(0, 0), r"length must be >= 1, got length=0"),
      (lambda: images.pixel_permutation(-1), r"pixel_permutation: seed must be >= 0, got seed=-1"),
      (lambda: images.train_validation_split(10, 0, 0), r"num_validation must be in \(0, 10\)"),
  ]
  type_errors = [
      (lambda: images.pixel_permutation(1.7), r"pixel_permutation: seed must be an int, got float: seed=1\.7"),
      (lambda: images.pixel_permutation(0, True), r"length must be an int"),
      (lambda: images.train_validation_split(10.5, 3, 0), r"num_train must be an int"),
      (lambda: images.train_validation_split(10, 3, 1.5), r"seed must be an int"),
  ]
  write_tiny_idx(tmp_path, n_train=12, n_test=5)
  d = images.load_images("mnist", source="idx", data_dir=tmp_path)
  value_errors += [
      (lambda: images.permuted_sequences(d, num_validation=4, train_subset=-3), r"train_subset must be >= 0"),
      (lambda: images.permuted_sequences(d, num_validation=4, eval_subset=-1), r"eval_subset must be >= 0"),
      (lambda: images.permuted_sequences(d, num_validation=0), r"num_validation must be >= 1"),
  ]
  type_errors += [(lambda: images.permuted_sequences(d, num_validation=2.5), r"num_validation must be an int")]
  for call, match in value_errors:
    with pytest.raises(ValueError, match=match):
      call()
  for call, match in type_errors:
    with pytest.raises(TypeError, match=match):
      call()


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="needs apt package dataset-fashion-mnist")
def test_real_fashion_mnist_idx():
  d = images.load_images("fashion_mnist", source="idx")
  assert d.train_images.shape == (60000, 28, 28) and d.test_images.shape == (10000, 28, 28)
  np.testing.assert_array_equal(np.bincount(d.test_labels), [1000] * 10)
