"""Tests for urnn_jax.config: absl flags generated from a config dataclass."""

import dataclasses

import pytest
from absl import flags

from urnn_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Config:
  task: str = dataclasses.field(default="a", metadata={"help": "Task.", "choices": ["a", "b"]})
  length: int = 5
  models: tuple[str, ...] = ("rnn",)
  hidden: tuple[int, ...] = (2, 4)
  rate: float = 0.5
  extra: float | None = None
  k: int | None = None
  flag: bool = True
  name: str = "x"


def _parse(*argv, sweep=(), aliases=None):
  fv = flags.FlagValues()
  config_lib.define_flags(Config, flag_values=fv, sweep=sweep, aliases=aliases)
  fv(["prog", *argv])
  return fv


def test_defaults_round_trip_to_the_default_config():
  fv = _parse()
  assert config_lib.configs_from_flags(Config, fv) == [Config()]
  assert "Task." in fv["task"].help


def test_values_types_and_sweeps():
  fv = _parse("--task=b", "--length=7,9", "--models=urnn,lstm", "--hidden=8", "--rate=0.1", "--extra=2",
              "--k=3", "--noflag", "--name=y", sweep=("length",))
  configs = config_lib.configs_from_flags(Config, fv, sweep=("length",))
  assert [c.length for c in configs] == [7, 9]
  c = configs[0]
  assert (c.task, c.models, c.hidden, c.rate, c.extra, c.k, c.flag, c.name) == (
      "b", ("urnn", "lstm"), (8,), 0.1, 2.0, 3, False, "y")


def test_bad_values_are_one_line_errors():
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--task=c")
  fv = _parse("--hidden=2,x")
  with pytest.raises(config_lib.FlagError, match="--hidden must be int values, got 2,x"):
    config_lib.configs_from_flags(Config, fv)
  fv = _parse("--length=", sweep=("length",))
  with pytest.raises(config_lib.FlagError, match="--length needs at least one value"):
    config_lib.configs_from_flags(Config, fv, sweep=("length",))


def test_only_present_keeps_a_preset_and_aliases_work():
  preset = Config(length=100, rate=0.01)
  fv = _parse("--seq_len=50", aliases={"seq_len": "length"})
  (c,) = config_lib.configs_from_flags(Config, fv, base=preset, only_present=True)
  assert (c.length, c.rate) == (50, 0.01)


def test_unsupported_field_types_are_named():
  @dataclasses.dataclass
  class Bad:
    mapping: dict = dataclasses.field(default_factory=dict)

  with pytest.raises(TypeError, match="config field 'mapping': unsupported type"):
    config_lib.define_flags(Bad, flag_values=flags.FlagValues())
