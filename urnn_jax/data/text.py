r"""Word-level language-modelling data: Penn Treebank files, PTB-style corpora, LM batches.

**Penn Treebank** (Mikolov's files ``ptb.train.txt``, ``ptb.valid.txt``,
``ptb.test.txt``, as used by Zaremba et al. 2014): one sentence a line,
words separated by spaces, every rare word already replaced by ``<unk>``,
numbers by ``N``. :func:`load_ptb` reads the three files from a directory,
appends ``<eos>`` to every (non-blank) line, and builds the vocabulary from
the **training file only** (10,000 words for PTB, ``<unk>`` and ``<eos>``
included): ids by decreasing training count, ties alphabetical.

**A PTB-style corpus from any plain text** (:func:`build_text_corpus`):
lower-cased word tokens (PTB-like clitics: ``don't`` -> ``do n't``,
``it's`` -> ``it 's``), numbers as ``N``, one sentence a line (split at
``.``, ``!``, ``?``), the ``vocab_size - 2`` most frequent training words
kept and every other word ``<unk>``; written as the three PTB files, so
:func:`load_ptb` reads it like PTB. The text is cut into paragraphs (at
blank lines and at fortune-file ``%`` lines), and paragraph i goes to
valid if ``i % 10 == 8``, to test if ``i % 10 == 9``, else to train: an
80/10/10 split, deterministic. :func:`fortune_files` lists the plain text
files of Debian's ``fortunes`` package (``/usr/share/games/fortunes``;
``apt-get install fortunes``), the offline English corpus of the CPU runs.
It is **not** PTB.

**Batching as the LM literature does** (:class:`LMBatches`, Zaremba et al.'s
``ptb_iterator``): the token stream is cut into ``batch_size`` contiguous
streams (row b holds tokens ``[b S, (b + 1) S)``, ``S = len // batch_size``,
the tail dropped), and window i is columns ``[i bptt, (i + 1) bptt)`` with
targets shifted by one; there are ``(S - 1) // bptt`` windows. Window i + 1
continues window i in every row, so the training loop carries the hidden
state from one window to the next (stopping its gradient there).
:func:`eval_windows` covers a whole split for evaluation: every token but
the first is a target exactly once (masked padding at the end).

Errors: :class:`CorpusError` (a ``ValueError``) names a missing file, an
empty corpus or split, or a vocabulary / ``<unk>`` mismatch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import re
from typing import Iterable, Sequence

import numpy as np

UNK = "<unk>"
EOS = "<eos>"
NUMBER = "N"
SPLITS = ("train", "valid", "test")
PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
PTB_VOCAB_SIZE = 10000
FORTUNES_DIR = "/usr/share/games/fortunes"
# Paragraph i of a text corpus goes to SPLIT_OF[i % 10].
SPLIT_OF = ("train",) * 8 + ("valid", "test")


class CorpusError(ValueError):
  """A corpus cannot be read: a missing file, an empty corpus, a vocabulary mismatch."""


# ----------------------------------------------------------------------------
# The corpus.


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """Three token-id streams and their vocabulary.

  Attributes:
    vocab: the words by id.
    train, valid, test: int32 token ids, ``<eos>`` after every sentence.
    source: where it was read from (for the results).
  """

  vocab: tuple[str, ...]
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  source: str = ""

  @functools.cached_property
  def word_to_id(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.vocab)}

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @property
  def eos_id(self) -> int:
    return self.word_to_id[EOS]

  @property
  def unk_id(self) -> int | None:
    return self.word_to_id.get(UNK)

  def split(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise ValueError(f"split={name!r}; expected one of {SPLITS}.")
    return getattr(self, name)

  def decode(self, ids: Iterable[int]) -> list[str]:
    return [self.vocab[int(i)] for i in ids]

  def encode(self, words: Iterable[str]) -> np.ndarray:
    """Ids of ``words``; a word outside the vocabulary is ``<unk>`` (KeyError without one)."""
    unk = self.unk_id
    ids = []
    for w in words:
      i = self.word_to_id.get(w, unk)
      if i is None:
        raise KeyError(f"{w!r} is not in the vocabulary, which has no {UNK}.")
      ids.append(i)
    return np.asarray(ids, np.int32)

  def sizes(self) -> dict[str, int]:
    return {"vocab": self.vocab_size, **{s: int(len(self.split(s))) for s in SPLITS}}

  def unk_rate(self, name: str) -> float:
    """The fraction of ``<unk>`` tokens in a split (0 without ``<unk>``)."""
    ids = self.split(name)
    return 0.0 if self.unk_id is None or len(ids) == 0 else float(np.mean(ids == self.unk_id))

  def digest(self) -> str:
    """16 hex digits of SHA-256 over the vocabulary and the three streams."""
    h = hashlib.sha256("\n".join(self.vocab).encode())
    for s in SPLITS:
      h.update(np.ascontiguousarray(self.split(s), np.int32).tobytes())
    return h.hexdigest()[:16]


def read_sentences(path: str) -> list[list[str]]:
  """The sentences of a PTB-format file: each non-blank line's words, then ``<eos>``.

  Raises:
    CorpusError: the file does not exist.
  """
  if not os.path.isfile(path):
    raise CorpusError(f"missing file {path}: a PTB-format corpus is the three files "
                      f"{', '.join(PTB_FILES.values())} in one directory.")
  with open(path, encoding="utf-8") as f:
    return [line.split() + [EOS] for line in f if line.strip()]


def build_vocab(sentences: Sequence[Sequence[str]], vocab_size: int | None = None) -> tuple[str, ...]:
  """The vocabulary of ``sentences``: by decreasing count, ties alphabetical.

  With ``vocab_size``: the ``vocab_size`` most frequent words, ``<unk>``
  taking the last place when words are left out (``<eos>`` is always kept).

  Raises:
    CorpusError: ``vocab_size`` is larger than the number of distinct words,
      or too small to hold ``<eos>`` and ``<unk>``.
  """
  counts = collections.Counter(w for s in sentences for w in s)
  words = sorted(counts, key=lambda w: (-counts[w], w))
  if vocab_size is None or vocab_size == len(words):
    return tuple(words)
  if vocab_size > len(words):
    raise CorpusError(f"vocab_size={vocab_size} but the training text has only {len(words)} distinct"
                      f" words ({EOS} and {UNK} included): a vocabulary mismatch; pass vocab_size <= "
                      f"{len(words)}.")
  if vocab_size < 2:
    raise CorpusError(f"vocab_size={vocab_size}: at least 2 ({EOS} and {UNK}) are needed.")
  kept = [w for w in words if w not in (EOS, UNK)][:vocab_size - 2]
  final = {w: counts[w] for w in kept}
  final[EOS] = counts[EOS]
  final[UNK] = sum(counts.values()) - sum(final.values())  # its own count and every dropped word's
  return tuple(sorted(final, key=lambda w: (-final[w], w)))


def _encode(sentences, word_to_id, unk_id, known, *, where: str, oov: str) -> np.ndarray:
  """Ids; words of ``known`` (the training words) outside the vocabulary are ``<unk>``."""
  missing = collections.Counter(w for s in sentences for w in s if w not in word_to_id and w not in known)
  if missing and (oov == "error" or unk_id is None):
    examples = ", ".join(repr(w) for w, _ in missing.most_common(5))
    total = sum(missing.values())
    hint = (f"there is no {UNK} in the training vocabulary to map them to" if unk_id is None
            else f"pass oov='unk' (--oov=unk) to map them to {UNK}")
    raise CorpusError(
        f"{where}: {total} tokens ({len(missing)} distinct words, e.g. {examples}) are not in the"
        f" vocabulary of the training file: a vocabulary/{UNK} mismatch (in a PTB-format corpus every"
        f" rare word is {UNK} in all three files); {hint}.")
  return np.asarray([word_to_id.get(w, unk_id) for s in sentences for w in s], np.int32)


def load_ptb(data_dir: str, *, vocab_size: int | None = None, oov: str = "error") -> Corpus:
  """Reads ``ptb.{train,valid,test}.txt`` from ``data_dir`` (see the module docstring).

  Args:
    data_dir: the directory of the three files.
    vocab_size: the expected vocabulary size, or fewer words (the rest
      ``<unk>``); None: every training word. A larger size is an error.
    oov: what to do with valid/test words outside the training vocabulary:
      ``"error"`` (PTB has none) or ``"unk"`` (map them to ``<unk>``).

  Raises:
    CorpusError: a missing file; an empty split; a vocabulary/``<unk>`` mismatch.
  """
  if oov not in ("error", "unk"):
    raise ValueError(f"oov={oov!r}; expected 'error' or 'unk'.")
  if not os.path.isdir(data_dir):
    raise CorpusError(f"missing directory {data_dir!r}: expected the PTB files "
                      f"{', '.join(PTB_FILES.values())} there.")
  sentences = {s: read_sentences(os.path.join(data_dir, PTB_FILES[s])) for s in SPLITS}
  for s in SPLITS:
    if not any(len(x) > 1 for x in sentences[s]):
      raise CorpusError(f"{os.path.join(data_dir, PTB_FILES[s])} is an empty corpus: no words in it.")
  vocab = build_vocab(sentences["train"], vocab_size)
  word_to_id = {w: i for i, w in enumerate(vocab)}
  unk_id = word_to_id.get(UNK)
  known = {w for x in sentences["train"] for w in x}
  ids = {s: _encode(sentences[s], word_to_id, unk_id, known, where=os.path.join(data_dir, PTB_FILES[s]),
                    oov=oov) for s in SPLITS}
  return Corpus(vocab, ids["train"], ids["valid"], ids["test"], source=os.path.abspath(data_dir))


# ----------------------------------------------------------------------------
# A PTB-style corpus from plain text.

_OVERSTRIKE = re.compile(".\x08")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:[.,:][0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLITICS = ("'s", "'re", "'ll", "'ve", "'d", "'m")


def tokenize(text: str) -> list[str]:
  """PTB-like word tokens of ``text``: lower case, numbers ``N``, clitics split."""
  out = []
  for w in _WORD.findall(_OVERSTRIKE.sub("", text).lower()):
    if w[0].isdigit():
      out.append(NUMBER)
    elif w.endswith("n't") and len(w) > 3:
      out += [w[:-3], "n't"]
    elif "'" in w:
      head, tail = w.split("'", 1)
      out += [head, "'" + tail] if "'" + tail in _CLITICS else [head, tail]
    else:
      out.append(w)
  return out


def paragraphs(text: str) -> list[str]:
  """``text`` cut at blank lines and at lines holding only ``%`` (fortune files)."""
  out, cur = [], []
  for line in _OVERSTRIKE.sub("", text).splitlines():
    if not line.strip() or line.strip() == "%":
      if cur:
        out.append(" ".join(cur))
      cur = []
    else:
      cur.append(line.strip())
  if cur:
    out.append(" ".join(cur))
  return out


def sentences_of(paragraph: str) -> list[list[str]]:
  """The tokenised sentences of a paragraph (split after ``.``, ``!``, ``?``); empty ones dropped."""
  return [t for t in (tokenize(s) for s in _SENTENCE_END.split(paragraph)) if t]


def fortune_files(directory: str = FORTUNES_DIR) -> list[str]:
  """The plain text files of a fortunes directory (not ``.dat``, ``.u8``, links), sorted.

  Raises:
    CorpusError: the directory is missing or holds no such file.
  """
  if not os.path.isdir(directory):
    raise CorpusError(f"missing directory {directory}: install Debian's fortunes package"
                      " (apt-get install fortunes), or pass --corpus=text with your own files.")
  files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                 if not f.endswith((".dat", ".u8")) and not os.path.islink(os.path.join(directory, f))
                 and os.path.isfile(os.path.join(directory, f)))
  if not files:
    raise CorpusError(f"{directory} holds no fortune text files (only .dat / .u8 or nothing).")
  return files


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files named by ``paths``: a file as is, a directory's regular files (sorted, not recursive)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      out += sorted(os.path.join(p, f) for f in os.listdir(p) if os.path.isfile(os.path.join(p, f)))
    elif os.path.isfile(p):
      out.append(p)
    else:
      raise CorpusError(f"missing file {p}: the text corpus needs existing files or directories.")
  return out


def split_text(files: Sequence[str]) -> dict[str, list[list[str]]]:
  """The tokenised sentences of ``files``, by split (paragraph i -> ``SPLIT_OF[i % 10]``)."""
  out = {s: [] for s in SPLITS}
  i = 0
  for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
    for para in paragraphs(text):
      sents = sentences_of(para)
      if sents:
        out[SPLIT_OF[i % len(SPLIT_OF)]] += sents
        i += 1
  return out


def build_text_corpus(files: Sequence[str], out_dir: str, *, vocab_size: int = PTB_VOCAB_SIZE) -> dict:
  """Writes a PTB-style corpus of the plain text ``files`` to ``out_dir`` (the three PTB files).

  The ``vocab_size - 2`` most frequent words of the training split are kept
  (with ``<unk>`` and ``<eos>``: ``vocab_size`` in all); every other word in
  all three splits becomes ``<unk>``. Returns statistics (sentences, tokens,
  ``<unk>`` rate per split; the distinct training words). Deterministic, and
  the files are rewritten only when their content changes.

  Raises:
    CorpusError: no files, an empty corpus or split, or fewer distinct
      training words than ``vocab_size - 2``.
  """
  files = list(files)
  if not files:
    raise CorpusError("build_text_corpus: no input files.")
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
    raise CorpusError(f"vocab_size must be an int >= 3, got {vocab_size!r}.")
  sents = split_text(files)
  for s in SPLITS:
    if not sents[s]:
      raise CorpusError(f"empty corpus: the {s} split of {len(files)} files ({files[0]}, ...) has no words"
                        " (a split needs at least 10 paragraphs of text in all).")
  counts = collections.Counter(w for x in sents["train"] for w in x)
  if len(counts) < vocab_size - 2:
    raise CorpusError(f"vocab_size={vocab_size}: the training text has only {len(counts)} distinct words,"
                      f" fewer than the {vocab_size - 2} to keep (besides {UNK}, {EOS}): a vocabulary"
                      f" mismatch; pass a smaller vocab_size.")
  kept = set(sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size - 2])
  stats = {"files": len(files), "distinct_train_words": len(counts), "vocab_size": vocab_size}
  os.makedirs(out_dir, exist_ok=True)
  for s in SPLITS:
    lines, unk, tokens = [], 0, 0
    for x in sents[s]:
      words = [w if w in kept else UNK for w in x]
      unk += sum(w == UNK for w in words)
      tokens += len(words) + 1
      lines.append(" " + " ".join(words) + " \n")  # Mikolov's files: a space on each side
    text = "".join(lines)
    path = os.path.join(out_dir, PTB_FILES[s])
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
    if old != text:
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
      os.replace(tmp, path)
    stats[s] = {"sentences": len(lines), "tokens": tokens, "unk_rate": unk / tokens}
  return stats


# ----------------------------------------------------------------------------
# Batching.


def batchify(tokens: np.ndarray, batch_size: int) -> np.ndarray:
  """The stream cut into ``batch_size`` contiguous rows ``(batch_size, len // batch_size)``.

  Raises:
    CorpusError: fewer than 2 tokens per row.
  """
  tokens = np.asarray(tokens, np.int32)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  s = len(tokens) // batch_size
  if s < 2:
    raise CorpusError(f"{len(tokens)} tokens cannot make {batch_size} streams of at least 2 tokens;"
                      " use a smaller batch size or a larger corpus.")
  return tokens[: s * batch_size].reshape(batch_size, s)


class LMBatches:
  """Windows of ``bptt`` steps over ``batch_size`` contiguous streams (see the module docstring).

  ``batches[i]`` is ``(x, y)``, both ``(batch_size, bptt)`` int32, ``y`` the
  next tokens; ``len(batches)`` is ``(S - 1) // bptt``. ``batches[i + 1]``
  continues ``batches[i]`` row by row: ``batches[i + 1][0][:, 0] ==
  batches[i][1][:, -1]``.
  """

  def __init__(self, tokens: np.ndarray, batch_size: int, bptt: int):
    if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
      raise ValueError(f"bptt must be a positive int, got {bptt!r}.")
    self.streams = batchify(tokens, batch_size)
    self.batch_size, self.bptt = batch_size, bptt
    self.num_windows = (self.streams.shape[1] - 1) // bptt
    if self.num_windows < 1:
      raise CorpusError(f"{len(tokens)} tokens in {batch_size} streams of {self.streams.shape[1]} make no"
                        f" window of bptt={bptt} steps; use a smaller batch size or bptt.")

  def __len__(self) -> int:
    return self.num_windows

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= i < self.num_windows:
      raise IndexError(f"window {i} of {self.num_windows}")
    a = i * self.bptt
    return self.streams[:, a:a + self.bptt], self.streams[:, a + 1:a + 1 + self.bptt]

  def __iter__(self):
    return (self[i] for i in range(self.num_windows))

  @property
  def tokens_per_window(self) -> int:
    return self.batch_size * self.bptt


def eval_windows(tokens: np.ndarray, batch_size: int, bptt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A whole split as ``(x, y, mask)``, each ``(W, batch_size, bptt)``: every token
  but the first is a target exactly once.

  Row b holds inputs ``tokens[b S : (b + 1) S]`` and targets one further,
  ``S = ceil((len - 1) / batch_size)``; the end is padded (``mask`` False).
  Windows are consecutive, so the state is carried through each row. The
  perplexity is ``exp(sum(nll * mask) / sum(mask))``.

  Raises:
    CorpusError: fewer than 2 tokens.
  """
  tokens = np.asarray(tokens, np.int32)
  if isinstance(bptt, bool) or not isinstance(bptt, int) or bptt < 1:
    raise ValueError(f"bptt must be a positive int, got {bptt!r}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  n = len(tokens) - 1
  if n < 1:
    raise CorpusError(f"a split of {len(tokens)} tokens has nothing to predict.")
  s = -(-n // batch_size)
  w = -(-s // bptt)
  shape = lambda a: a.reshape(batch_size, w, bptt).transpose(1, 0, 2)
  # Row b covers positions [b S, (b + 1) S) of the n predictions, then padding.
  idx = np.arange(batch_size)[:, None] * s + np.arange(w * bptt)[None, :]  # (B, W bptt)
  valid = (np.arange(w * bptt)[None, :] < s) & (idx < n)
  idx = np.where(valid, idx, 0)
  x = np.where(valid, tokens[:-1][idx], 0).astype(np.int32)
  y = np.where(valid, tokens[1:][idx], 0).astype(np.int32)
  return shape(x), shape(y), shape(valid)
