"""Tests for urnn_jax.data.memory: every answer is recomputed by a plain Python loop."""

import itertools
import math

import jax
import numpy as np
import pytest

from urnn_jax.data import memory


def key(i=0):
  return jax.random.key(i)


def as_lists(*arrays):
  return [np.asarray(a).tolist() for a in arrays]


def test_first_term_recall_answers():
  tokens, targets = as_lists(*memory.first_term_recall(key(1), 16, 7, num_values=5))
  assert len(tokens) == 16 and all(len(seq) == 7 for seq in tokens)
  for seq, answer in zip(tokens, targets):
    assert all(0 <= v < 5 for v in seq)
    first = None
    for v in seq:  # the first term, by walking the sequence
      if first is None:
        first = v
    assert answer == first


@pytest.mark.parametrize("k", [1, 3])
def test_kth_highest_answers(k):
  tokens, targets = as_lists(*memory.kth_highest(key(2), 32, 9, k=k, num_values=6))
  for seq, answer in zip(tokens, targets):
    assert all(0 <= v < 6 for v in seq)
    # Remove the current maximum k-1 times (repeats count); the answer is the next maximum.
    rest = list(seq)
    for _ in range(k - 1):
      rest.remove(max(rest))
    assert answer == max(rest)


def test_kth_highest_seed_example():
  # Seed 002: 5, 7, 9, 53, 99, 98, 2, 100 -> 98 is the 3rd highest.
  seq = [5, 7, 9, 53, 99, 98, 2, 100]
  assert sorted(seq)[len(seq) - 3] == 98


def test_copy_memory_layout_and_answers():
  t, s, c = 6, 4, 3
  tokens, targets = as_lists(*memory.copy_memory(key(3), 8, t, num_symbols=s, num_categories=c))
  for inp, out in zip(tokens, targets):
    assert len(inp) == len(out) == t + 2 * s
    symbols = inp[:s]
    assert all(1 <= v <= c for v in symbols)
    expected_in = symbols + [0] * (t - 1) + [c + 1] + [0] * s
    expected_out = [0] * (t + s) + symbols
    assert inp == expected_in
    assert out == expected_out


def test_adding_problem_answers():
  t = 10
  x, y = memory.adding_problem(key(4), 64, t)
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  assert x.shape == (64, t, 2)
  for seq, answer in zip(x, y):
    marked = [i for i in range(t) if seq[i, 1] == 1.0]
    assert all(seq[i, 1] == 0.0 for i in range(t) if i not in marked)
    assert len(marked) == 2
    assert marked[0] < t // 2 <= marked[1]
    total = 0.0
    for i in marked:
      assert 0.0 <= seq[i, 0] < 1.0
      total += seq[i, 0]
    assert answer == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize(
    "fn,args",
    [
        (memory.first_term_recall, (5, 7)),
        (memory.kth_highest, (5, 7)),
        (memory.copy_memory, (5, 7)),
        (memory.adding_problem, (5, 7)),
    ],
)
def test_generators_are_deterministic(fn, args):
  a = fn(key(7), *args)
  b = fn(key(7), *args)
  c = fn(key(8), *args)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert any(not np.array_equal(u, v) for u, v in zip(a, c))


def test_kth_highest_distribution_by_enumeration():
  t, v, k = 4, 5, 2
  counts = np.zeros(v)
  for seq in itertools.product(range(v), repeat=t):
    counts[sorted(seq, reverse=True)[k - 1]] += 1
  np.testing.assert_allclose(memory.kth_highest_distribution(t, k=k, num_values=v), counts / v**t, atol=1e-12)


def test_baselines():
  assert memory.memoryless_baseline("first_term", 20)["accuracy"] == pytest.approx(0.1)
  assert memory.memoryless_baseline("first_term", 20)["loss"] == pytest.approx(math.log(10))
  copy = memory.memoryless_baseline("copy", 100)
  assert copy["loss"] == pytest.approx(10 * math.log(8) / 120)
  assert copy["accuracy"] == pytest.approx(1 / 8)
  assert memory.memoryless_baseline("adding", 50)["loss"] == pytest.approx(1 / 6)
  # The kth-highest answer concentrates with T: the constant guess gets better.
  accs = [memory.memoryless_baseline("kth_highest", t)["accuracy"] for t in (100, 200, 400)]
  assert accs[0] < accs[1] < accs[2]
  # Empirical check of the k-th highest baseline (independent of the formula).
  _, y = memory.kth_highest(key(5), 4000, 100)
  freq = np.bincount(np.asarray(y), minlength=100) / 4000
  assert abs(freq.max() - accs[0]) < 0.03


def test_adding_baseline_is_target_variance():
  _, y = memory.adding_problem(key(6), 20000, 20)
  assert float(np.mean((np.asarray(y) - 1.0) ** 2)) == pytest.approx(1 / 6, abs=0.01)


@pytest.mark.parametrize("name,length,steps,features", [
    ("first_term", 7, 7, 10),
    ("kth_highest", 7, 7, 100),
    ("copy", 7, 27, 10),
    ("adding", 7, 7, 2),
])
def test_get_task_sample_shapes(name, length, steps, features):
  task = memory.get_task(name)
  x, y = task.sample(key(0), 3, length)
  assert x.shape == (3, steps, features) and x.dtype == np.float32
  assert task.num_steps(length) == steps
  if task.kind == "seq_class":
    assert y.shape == (3, steps)
  else:
    assert y.shape == (3,)


def test_errors():
  with pytest.raises(ValueError, match="unknown memory task"):
    memory.get_task("nope")
  with pytest.raises(ValueError, match="bad options"):
    memory.get_task("adding", k=3)
  with pytest.raises(ValueError, match="k=5 must be <= length=3"):
    memory.kth_highest(key(), 2, 3, k=5)
  with pytest.raises(ValueError, match="length must be a positive int"):
    memory.first_term_recall(key(), 2, 0)


def test_non_float_dtypes_raise():
  # Issue 22: an integer or complex dtype for the adding problem failed inside
  # jax.random.uniform.
  for dtype in ("int32", "complex64", "bool"):
    with pytest.raises(TypeError, match=rf"adding_problem: dtype must be a real floating dtype.*{dtype}"):
      memory.adding_problem(key(), 2, 4, dtype=dtype)


def test_bad_sizes_raise_when_the_task_is_built():
  # Issue 22: get_task("first_term", num_values=0) was accepted until the
  # first sample, and baselines of negative lengths gave negative losses.
  bad_options = [
      ("first_term", {"num_values": 0}, "num_values"),
      ("first_term", {"num_values": -2}, "num_values"),
      ("kth_highest", {"k": 0}, "k"),
      ("kth_highest", {"num_values": 0}, "num_values"),
      ("copy", {"num_symbols": 0}, "num_symbols"),
      ("copy", {"num_categories": 2.5}, "num_categories"),
  ]
  for name, options, option in bad_options:
    with pytest.raises(ValueError, match=rf"get_task\('{name}'\).*{option} must be a positive int"):
      memory.get_task(name, **options)
  for name in memory.TASKS:
    with pytest.raises(ValueError, match="length must be a positive int, got -30"):
      memory.memoryless_baseline(name, -30)
    with pytest.raises(ValueError, match=r"num_steps: length must be a positive int, got 0"):
      memory.get_task(name).num_steps(0)
  with pytest.raises(ValueError, match="length must be >= 2"):
    memory.memoryless_baseline("adding", 1)
  with pytest.raises(ValueError, match="k=5 must be <= length=3"):
    memory.kth_highest_distribution(3, k=5)
