"""Tests of urnn_jax.experiments.language_model and train.language_model on a tiny corpus
the tests write (no fortunes, no PTB needed)."""

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urnn_jax import training
from urnn_jax.data import text
from urnn_jax.experiments import language_model as lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = ("train_seconds", "eval_seconds")
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "and", "then", "slept", "<unk>"]


def write_tiny_ptb(directory, seed=0):
  """Three PTB-format files of short random sentences over a 13-word vocabulary."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for name, n in (("train", 120), ("valid", 20), ("test", 20)):
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(n)]
    if name == "train":
      lines.append(" ".join(WORDS))  # every word occurs in the training file
    with open(os.path.join(directory, text.PTB_FILES[name]), "w") as f:
      f.write("".join(f" {line} \n" for line in lines))
  return str(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = write_tiny_ptb(tmp_path_factory.mktemp("tiny_ptb"))
  return d, text.load_ptb(d)


def tiny_config(data_dir, **kw):
  base = dict(corpus="ptb", data_dir=data_dir, vocab_size=len(WORDS) + 1, model="urnn", hidden=6, embed=5,
              bptt=4, batch_size=3, eval_batch_size=2, epochs=2, max_steps_per_epoch=4, patience=0,
              learning_rate=0.01, num_samples=2, sample_length=6, diagnostics_batch=2)
  base.update(kw)
  return lm.Config(**base)


def quiet():
  return dict(log=lambda *_: None, progress_stream=open(os.devnull, "w"))


def untimed(history):
  return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny, tmp_path):
  d, corpus = tiny
  cfg = tiny_config(d)
  full = lm.train_and_evaluate(cfg, str(tmp_path / "full"), corpus, **quiet())
  assert full["steps"] == 8 and full["epochs_run"] == 2 and full["test_ppl"] is not None
  assert full["history"][0]["step"] == 4 and full["history"][1]["epoch"] == 1
  # Killed mid-epoch (step 6 of 8, the carried state in the checkpoint), then resumed.
  # (--diagnostics may change on resume: the gradient norms of the full run are enough.)
  cfg = dataclasses.replace(cfg, diagnostics=False)
  part = lm.train_and_evaluate(cfg, str(tmp_path / "resumed"), corpus, stop_after=6, **quiet())
  assert part["interrupted"] and part["steps"] == 6
  with training.Checkpoints(tmp_path / "resumed" / cfg.run_name() / "checkpoints") as c:
    assert c.latest_step() == 6
  resumed = lm.train_and_evaluate(cfg, str(tmp_path / "resumed"), corpus, **quiet())
  assert untimed(resumed["history"]) == untimed(full["history"])
  assert resumed["test_ppl"] == full["test_ppl"] and resumed["samples"] == full["samples"]
  # Perplexity is exp of the mean NLL; the uRNN's W stayed orthogonal.
  assert math.isclose(full["val_ppl"], math.exp(full["val_loss"]), rel_tol=1e-12)
  assert full["test_tokens"] == len(corpus.test) - 1
  assert full["orthogonality_error_best"] < 1e-4
  run_dir = tmp_path / "full" / cfg.run_name()
  for f in ("results.json", "history.json", "history.csv", "curves.png", "samples.txt", "config.json",
            "gradient_norms.json", "gradient_norms.png"):
    assert (run_dir / f).exists(), f
  g = training.read_json(run_dir / "gradient_norms.json")
  assert len(g["trained"]["last"]) == cfg.bptt and g["trained"]["bound_check"]["svd_bound_holds"]


def test_the_carry_is_reset_each_epoch_and_carried_between_windows(tiny):
  d, corpus = tiny
  cfg = tiny_config(d, model="ugru")
  model = lm.make_model(cfg, corpus.vocab_size)
  params, constants = lm.init_variables(cfg, model)
  tx = lm.make_optimizer(cfg)
  step = jax.jit(lm.make_train_step(cfg, model, constants, tx, steps_per_epoch=4))
  batches = text.LMBatches(corpus.train, cfg.batch_size, cfg.bptt)
  junk = jnp.full((cfg.batch_size, cfg.hidden), 0.7)
  zero = lm.initial_carry(cfg, cfg.batch_size)
  state = lambda s, c: lm.LMState(jnp.asarray(s, jnp.int32), params, tx.init(params), c)
  # At an epoch's first window the carried state is replaced by zeros ...
  s0, m0 = step(state(0, junk), batches[0])
  s0z, m0z = step(state(0, zero), batches[0])
  assert float(m0["loss"]) == float(m0z["loss"])
  # ... elsewhere it is used, and the new carry is the state after the window.
  _, m1 = step(state(1, junk), batches[1])
  _, m1z = step(state(1, zero), batches[1])
  assert float(m1["loss"]) != float(m1z["loss"])
  carry, _ = jax.jit(model.apply)({"params": params, **constants}, jnp.asarray(batches[0][0]), zero)
  np.testing.assert_allclose(np.asarray(s0.carry), np.asarray(carry), rtol=1e-6)
  # No gradient flows into the previous window: the loss's gradient in the carry is stopped.
  loss = lambda c: jnp.mean(lm.token_nll(model, {"params": params, **constants}, jnp.asarray(batches[1][0]),
                                         jnp.asarray(batches[1][1]), jax.lax.stop_gradient(c))[1])
  assert float(jnp.abs(jax.jit(jax.grad(loss))(junk)).max()) == 0.0


def test_perplexity_is_exp_mean_nll_over_the_whole_split(tiny):
  d, corpus = tiny
  cfg = tiny_config(d, model="lstm", eval_batch_size=1, bptt=7)
  model = lm.make_model(cfg, corpus.vocab_size)
  params, constants = lm.init_variables(cfg, model)
  windows = text.eval_windows(corpus.valid, 1, cfg.bptt)
  got = lm.perplexity(jax.jit(lm.make_eval_fn(cfg, model, constants)), params, windows)
  # One pass over the whole stream from a zero state: every token but the first predicted.
  ids = jnp.asarray(corpus.valid)
  _, nll = lm.token_nll(model, {"params": params, **constants}, ids[None, :-1], ids[None, 1:],
                        lm.initial_carry(cfg, 1))
  assert got["tokens"] == len(corpus.valid) - 1
  np.testing.assert_allclose(got["loss"], float(jnp.mean(nll)), rtol=1e-5)
  assert got["ppl"] == pytest.approx(math.exp(got["loss"]))


def test_sampling_is_deterministic_and_stops_at_eos(tiny):
  d, corpus = tiny
  cfg = tiny_config(d, model="rnn", num_samples=4, sample_length=12)
  model = lm.make_model(cfg, corpus.vocab_size)
  params, constants = lm.init_variables(cfg, model)
  a = lm.sample_sentences(cfg, model, constants, params, corpus)
  b = lm.sample_sentences(cfg, model, constants, params, corpus)
  assert a == b and len(a) == 4
  for s in a:
    words = s.split()
    assert len(words) <= 12 and text.EOS not in words and set(words) <= set(corpus.vocab)
  other = lm.sample_sentences(dataclasses.replace(cfg, seed=1), model, constants, params, corpus)
  assert other != a
  ids = np.array([[1, 2, corpus.eos_id, 3], [2, 2, 2, 2]])
  assert lm.sentences_from_ids(corpus, ids) == [" ".join(corpus.vocab[i] for i in (1, 2)),
                                                " ".join([corpus.vocab[2]] * 4)]
  assert lm.sample_sentences(dataclasses.replace(cfg, num_samples=0), model, constants, params, corpus) == []


@pytest.mark.parametrize("name,constraint", [("urnn_param_expm", "projection"), ("ugru", "cayley")])
def test_registry_models_build_and_step(tiny, name, constraint):
  d, corpus = tiny
  cfg = tiny_config(d, model=name, constraint=constraint, recurrent_learning_rate=0.001)
  model = lm.make_model(cfg, corpus.vocab_size)
  params, constants = lm.init_variables(cfg, model)
  tx = lm.make_optimizer(cfg)
  step = lm.make_train_step(cfg, model, constants, tx, steps_per_epoch=4)
  s = lm.LMState(jnp.zeros((), jnp.int32), params, tx.init(params), lm.initial_carry(cfg, cfg.batch_size))
  s, m = step(s, text.LMBatches(corpus.train, cfg.batch_size, cfg.bptt)[0])
  assert bool(m["finite"]) and float(m["loss"]) > 0
  assert lm.orthogonality(cfg, model, {"params": s.params, **constants}) < 1e-4
  assert lm.orthogonality(dataclasses.replace(cfg, model="gru"), lm.make_model(
      dataclasses.replace(cfg, model="gru"), corpus.vocab_size), None) is None  # no orthogonal matrix


def test_config_validation_and_run_names(tmp_path):
  base = lm.Config(corpus="ptb", data_dir=str(tmp_path))
  base.validate()
  for kw, match in [({"model": "nope"}, "model='nope'"), ({"bptt": 0}, "bptt must be a positive int"),
                    ({"vocab_size": 2}, "vocab_size must be >= 3"), ({"temperature": 0.0}, "temperature"),
                    ({"learning_rate": -1.0}, "learning_rate"), ({"activation": "gelu"}, "activation='gelu'"),
                    ({"corpus": "wiki"}, "corpus='wiki'"), ({"data_dir": None}, "needs --data_dir"),
                    ({"optimizer": "lbfgs"}, "optimizer")]:
    with pytest.raises(ValueError, match=match):
      dataclasses.replace(base, **kw).validate()
  # The fields a model ignores do not make another run.
  assert lm.Config(model="gru", activation="abs").run_name() == lm.Config(model="gru").run_name()
  assert lm.Config(model="rnn", constraint="expm").run_name() == "fortunes_rnn_relu_bptt35_h128_s0"
  assert lm.Config(model="ugru", constraint="expm", bptt=150).run_name() == "fortunes_ugru_expm_bptt150_h128_s0"
  with pytest.raises(text.CorpusError, match="missing file .*ptb.train.txt"):
    lm.load_corpus(base, str(tmp_path / "w"))


def _run_binary(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1")
  return subprocess.run([sys.executable, "-m", "train.language_model", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_binary_one_epoch_on_a_tiny_text_corpus(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  rng = np.random.default_rng(1)
  paras = [" ".join(rng.choice(WORDS[:-1], size=9)).capitalize() + "." for _ in range(60)]
  (src / "story.txt").write_text("\n\n".join(paras) + "\n")
  workdir = tmp_path / "runs"
  p = _run_binary("--corpus=text", f"--data_dir={src}", "--vocab_size=10", "--model=urnn,gru",
                  "--activation=abs", "--hidden=4", "--embed=4", "--bptt=5", "--batch_size=3",
                  "--eval_batch_size=2", "--epochs=1", "--num_samples=1", "--sample_length=5",
                  f"--workdir={workdir}")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "valid ppl" in p.stdout and "test ppl" in p.stdout and "sample:" in p.stdout
  assert "ETA" in p.stderr  # the progress line
  runs = training.collect_json(str(workdir))
  assert sorted(r["run"] for r in runs) == ["text_gru_bptt5_h4_s0", "text_urnn_projection_abs_bptt5_h4_s0"]
  for r in runs:
    assert r["epochs_run"] == 1 and r["best_epoch"] == 0 and r["test_ppl"] > 1 and r["corpus"]["vocab"] == 10
  for f in ("summary.md", "summary.csv", "summary.json", "corpus_text_v10/ptb.train.txt"):
    assert (workdir / f).exists(), f
  md = (workdir / "summary.md").read_text()
  assert "| urnn | abs | projection |" in md and "Zaremba" in md
  # Rerun with another --hidden in the same workdir: a one-line usage error, nothing trained.
  p = _run_binary("--corpus=text", f"--data_dir={src}", "--vocab_size=10", "--model=gru", "--hidden=4",
                  "--embed=3", "--bptt=5", "--batch_size=3", f"--workdir={workdir}")
  assert p.returncode != 0 and "different configuration" in p.stderr and "embed" in p.stderr
  assert "Traceback" not in p.stderr


def test_binary_bad_flags_and_missing_corpus_are_one_line_errors(tmp_path):
  p = _run_binary("--model=rnn,nope", f"--workdir={tmp_path / 'w'}")
  assert p.returncode != 0 and "unknown ['nope']" in p.stderr and "Traceback" not in p.stderr
  p = _run_binary("--corpus=ptb", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'w'}")
  assert p.returncode != 0 and "missing file" in p.stderr and "ptb.train.txt" in p.stderr
  assert "Traceback" not in p.stderr and not (tmp_path / "w").exists()


def test_step_time_benchmark_runs_on_tiny_shapes():
  """benchmarks/lm_step_time.py end to end on tiny shapes (no timing assertion)."""
  from benchmarks import lm_step_time as bench

  payload = bench.run(quick=True, names=["rnn", "urnn", "gru", "ugru"], hidden=4, embed=3, vocab=20, bptt=3,
                      batch=2, activation="relu", repeats=1, log=lambda *_: None)
  assert {(r["kind"], r["model"]) for r in payload["rows"]} == {
      (k, m) for k in ("lm", "recurrent") for m in ("rnn", "urnn", "gru", "ugru")}
  assert all(r["ms_per_batch"] > 0 and r["compile_s"] > 0 for r in payload["rows"])
  ratios = {(r["kind"], r["ratio"]): r for r in payload["ratios"]}
  assert set(ratios) == {(k, q) for k in ("lm", "recurrent") for q in ("urnn / rnn", "ugru / gru")}
  assert [t["target"] for t in payload["targets"]] == ["urnn / rnn per LM batch <= 1.10",
                                                       "ugru / gru per LM batch <= 1.10"]
  md = bench.markdown(payload)
  assert "# LM time per batch" in md and "| lm | urnn / rnn |" in md
