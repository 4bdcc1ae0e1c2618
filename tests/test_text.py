"""Tests of urnn_jax.data.text on tiny files the tests write (no corpus needed)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import urnn_jax
from urnn_jax.data import text


def write_ptb(directory, train, valid, test):
  os.makedirs(directory, exist_ok=True)
  for name, lines in zip(text.SPLITS, (train, valid, test)):
    with open(os.path.join(directory, text.PTB_FILES[name]), "w") as f:
      f.write("".join(f" {line} \n" for line in lines))
  return str(directory)


TRAIN = ["the cat sat", "the dog sat on the mat", "a <unk> cat", "", "the end"]
VALID = ["the cat", "a dog <unk>"]
TEST = ["the mat sat"]


def test_ptb_reader_vocabulary_eos_and_unk(tmp_path):
  d = write_ptb(tmp_path, TRAIN, VALID, TEST)
  c = text.load_ptb(d)
  # Vocabulary from the training file only, by count then alphabetically; <eos> per non-blank line.
  counts = {"the": 4, text.EOS: 4, "sat": 2, "cat": 2}
  assert c.vocab[:4] == (text.EOS, "the", "cat", "sat")  # 4, 4 (ties alphabetical: "<" < "t"), 2, 2
  assert set(c.vocab) == {"the", "cat", "sat", "dog", "on", "mat", "a", text.UNK, "end", text.EOS}
  assert sum(c.train == c.eos_id) == counts[text.EOS] and len(c.train) == 3 + 6 + 3 + 2 + 4
  assert c.decode(c.train[:4]) == ["the", "cat", "sat", text.EOS]
  assert c.decode(c.valid) == ["the", "cat", text.EOS, "a", "dog", text.UNK, text.EOS]
  assert c.decode(c.test) == ["the", "mat", "sat", text.EOS]
  assert c.unk_id is not None and c.unk_rate("train") == pytest.approx(1 / 18)
  assert c.train.dtype == np.int32 and c.sizes()["vocab"] == 10
  assert list(c.encode(["cat", "zebra"])) == [c.word_to_id["cat"], c.unk_id]
  assert len(c.digest()) == 16 and c.digest() == text.load_ptb(d).digest()


def test_vocab_size_keeps_the_most_frequent_words(tmp_path):
  d = write_ptb(tmp_path, TRAIN, VALID, TEST)
  c = text.load_ptb(d, vocab_size=5)
  assert len(c.vocab) == 5 and text.UNK in c.vocab and text.EOS in c.vocab
  assert {"the", "cat", "sat"} <= set(c.vocab)
  # Dropped words are <unk> everywhere; <unk> counts them (5 + its own 1 in train).
  assert c.decode(c.test) == ["the", text.UNK, "sat", text.EOS]
  assert int(np.sum(c.train == c.unk_id)) == 6
  with pytest.raises(text.CorpusError, match="vocab_size=50 but the training text has only 10 distinct"):
    text.load_ptb(d, vocab_size=50)


def test_errors_name_the_problem(tmp_path):
  d = write_ptb(tmp_path / "ok", TRAIN, VALID, TEST)
  os.remove(os.path.join(d, "ptb.test.txt"))
  with pytest.raises(text.CorpusError, match="missing file .*ptb.test.txt"):
    text.load_ptb(d)
  with pytest.raises(text.CorpusError, match="missing directory"):
    text.load_ptb(str(tmp_path / "nowhere"))
  d = write_ptb(tmp_path / "empty", ["", "  "], VALID, TEST)
  with pytest.raises(text.CorpusError, match="ptb.train.txt is an empty corpus"):
    text.load_ptb(d)
  # A valid word the training file does not have: the files are not one PTB corpus.
  d = write_ptb(tmp_path / "oov", TRAIN, ["the zebra", "a yak"], TEST)
  with pytest.raises(text.CorpusError, match=r"ptb.valid.txt: 2 tokens .*'zebra'.*<unk> mismatch"):
    text.load_ptb(d)
  c = text.load_ptb(d, oov="unk")
  assert c.decode(c.valid) == ["the", text.UNK, text.EOS, "a", text.UNK, text.EOS]
  d = write_ptb(tmp_path / "nounk", ["the cat", "a dog"], ["the yak"], ["a cat"])
  with pytest.raises(text.CorpusError, match="no <unk> in the training vocabulary"):
    text.load_ptb(d, oov="unk")
  with pytest.raises(text.CorpusError, match="no window of bptt=50"):
    text.LMBatches(np.arange(40), 2, 50)
  with pytest.raises(text.CorpusError, match="cannot make 30 streams"):
    text.batchify(np.arange(40), 30)
  with pytest.raises(text.CorpusError, match="missing directory"):
    text.fortune_files(str(tmp_path / "no_fortunes"))


def test_plain_text_corpus_is_ptb_style_and_deterministic(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  # 20 fortunes: paragraphs at '%' lines; an overstruck word; a number; clitics.
  fortunes = []
  for i in range(20):
    fortunes.append(f"Fortune {i}: The CAT doesn't sit. It's on the mat!\nA d\x08dog barks {i * 7} times?")
  (src / "cookies").write_text("\n%\n".join(fortunes) + "\n%\n")
  (src / "cookies.dat").write_bytes(b"\x00\x01binary")
  os.symlink(src / "cookies", src / "cookies.u8")
  files = text.fortune_files(str(src))
  assert files == [str(src / "cookies")]
  assert text.tokenize("The CAT doesn't sit. It's 42!") == ["the", "cat", "does", "n't", "sit", "it", "'s", "N"]
  # 15 distinct words ('N' 40 times, the others 20): vocab_size 16 keeps 14 (ties alphabetical), drops 'times'.
  stats = text.build_text_corpus(files, str(tmp_path / "corpus"), vocab_size=16)
  # Paragraph i: train unless i % 10 in (8, 9): 16 / 2 / 2 paragraphs of 3 sentences each.
  assert (stats["train"]["sentences"], stats["valid"]["sentences"], stats["test"]["sentences"]) == (48, 6, 6)
  c = text.load_ptb(str(tmp_path / "corpus"), vocab_size=16)
  assert c.vocab_size == 16 and text.UNK in c.vocab and "dog" in c.vocab and "d" not in c.vocab
  assert "times" not in c.vocab and stats["distinct_train_words"] == 15
  assert stats["train"]["unk_rate"] == pytest.approx(1 / 20)  # one "times" in the 20 tokens of a paragraph
  first = c.decode(c.train[: list(c.train).index(c.eos_id) + 1])
  assert first == ["fortune", "N", "the", "cat", "does", "n't", "sit", text.EOS]
  assert all(w == w.lower() or w in ("N",) for w in c.vocab)
  mtime = os.path.getmtime(tmp_path / "corpus" / "ptb.train.txt")
  assert text.build_text_corpus(files, str(tmp_path / "corpus"), vocab_size=16) == stats
  assert os.path.getmtime(tmp_path / "corpus" / "ptb.train.txt") == mtime  # unchanged: not rewritten
  with pytest.raises(text.CorpusError, match="only .* distinct words"):
    text.build_text_corpus(files, str(tmp_path / "c2"), vocab_size=500)
  (src / "short").write_text("Just one paragraph.\n")
  with pytest.raises(text.CorpusError, match="empty corpus: the valid split"):
    text.build_text_corpus([str(src / "short")], str(tmp_path / "c3"), vocab_size=3)
  with pytest.raises(text.CorpusError, match="missing file"):
    text.expand_paths([str(src / "nope.txt")])


def test_lm_batches_are_contiguous_streams_in_windows():
  tokens = np.arange(103, dtype=np.int32)
  b = text.LMBatches(tokens, batch_size=4, bptt=6)
  # 4 streams of 25 tokens: row r starts at 25 r; (25 - 1) // 6 = 4 windows.
  assert b.streams.shape == (4, 25) and len(b) == 4
  assert list(b.streams[:, 0]) == [0, 25, 50, 75]
  for i, (x, y) in enumerate(b):
    assert x.shape == y.shape == (4, 6)
    np.testing.assert_array_equal(y, x + 1)  # targets: the next token
    np.testing.assert_array_equal(x[:, 0], np.arange(4) * 25 + 6 * i)
    if i + 1 < len(b):
      np.testing.assert_array_equal(b[i + 1][0][:, 0], y[:, -1])  # the next window continues this one
  with pytest.raises(IndexError):
    b[4]


@pytest.mark.parametrize("n,batch,bptt", [(50, 3, 4), (11, 2, 35), (9, 20, 3)])
def test_eval_windows_score_every_token_but_the_first_once(n, batch, bptt):
  tokens = np.arange(100, 100 + n, dtype=np.int32)
  x, y, mask = text.eval_windows(tokens, batch, bptt)
  assert x.shape == y.shape == mask.shape and x.shape[1:] == (batch, bptt)
  assert int(mask.sum()) == n - 1
  assert sorted(y[mask].tolist()) == list(range(101, 100 + n))
  np.testing.assert_array_equal(y[mask], x[mask] + 1)
  # Row by row the windows are consecutive: flattened over (window, step) each row is a run.
  rows = x.transpose(1, 0, 2).reshape(batch, -1)
  rmask = mask.transpose(1, 0, 2).reshape(batch, -1)
  for r, m in zip(rows, rmask):
    v = r[m]
    assert np.all(np.diff(v) == 1) and np.all(m[: m.sum()])  # contiguous, padding only at the end


def test_carried_state_over_windows_equals_one_pass():
  """The state carried window to window gives the states of one pass over each stream."""
  tokens = np.random.default_rng(0).integers(0, 7, 200).astype(np.int32)
  b = text.LMBatches(tokens, batch_size=3, bptt=5)
  layer = urnn_jax.Recurrent(urnn_jax.UnitaryGRUCell(4), return_carry=True)
  emb = jax.random.normal(jax.random.key(1), (7, 2))
  variables = layer.init(jax.random.key(0), emb[b[0][0]])
  carry = jnp.zeros((3, 4))
  outs = []
  for x, _ in b:
    carry, ys = layer.apply(variables, emb[x], initial_carry=carry)
    outs.append(ys)
  whole = b.streams[:, : len(b) * b.bptt]
  _, ref = layer.apply(variables, emb[whole])
  np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(ref), rtol=1e-5, atol=1e-6)
