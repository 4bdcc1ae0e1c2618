"""Tests for urnn_jax.config: absl flags generated from a config dataclass."""

import dataclasses
import re

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


# ----------------------------------------------------------------------------
# The several-process flags every binary shares.


def _distributed(*argv):
  fv = flags.FlagValues()
  config_lib.define_distributed_flags(flag_values=fv)
  fv(["prog", *argv])
  return fv


def test_one_process_by_default_starts_nothing():
  import jax

  fv = _distributed()
  assert config_lib.distributed_settings(fv) is None
  assert config_lib.start_distributed(fv) is False and not jax.distributed.is_initialized()
  assert {"num_processes", "process_id", "coordinator_address", "local_device_ids",
          "initialization_timeout"} <= set(fv)


def test_distributed_settings_are_initialize_distributed_arguments():
  fv = _distributed("--num_processes=4", "--process_id=3", "--coordinator_address=10.0.0.1:1234",
                    "--local_device_ids=0,1", "--initialization_timeout=60")
  assert config_lib.distributed_settings(fv) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
      "local_device_ids": [0, 1], "initialization_timeout": 60}


@pytest.mark.parametrize("argv, message", [
    (("--num_processes=2",), "--num_processes=2 needs --coordinator_address (host:port of process 0)."),
    (("--num_processes=0",), "--num_processes=0; expected a positive int (1: one process)."),
    (("--num_processes=2", "--process_id=2", "--coordinator_address=h:1"),
     "--process_id=2; expected an int in [0, 2) (--num_processes=2)."),
    (("--num_processes=2", "--process_id=-1", "--coordinator_address=h:1"), "--process_id=-1; expected"),
    (("--num_processes=2", "--coordinator_address=localhost"),
     "--coordinator_address='localhost'; expected host:port, e.g. 127.0.0.1:12345."),
    (("--num_processes=2", "--coordinator_address=h:99999"), "--coordinator_address='h:99999'; expected host:port"),
    (("--process_id=1",), "--process_id=1 needs --num_processes > 1 (the run has one process)."),
    (("--coordinator_address=h:1",), "--coordinator_address=h:1 needs --num_processes > 1"),
    (("--num_processes=2", "--coordinator_address=h:1", "--local_device_ids=0,x"),
     "--local_device_ids=0,x; expected non-negative ints."),
    (("--num_processes=2", "--coordinator_address=h:1", "--initialization_timeout=0"),
     "--initialization_timeout=0; expected a positive number of seconds."),
])
def test_bad_distributed_flags_are_one_line_usage_errors(argv, message):
  from absl import app

  fv = _distributed(*argv)
  with pytest.raises(config_lib.FlagError) as e:
    config_lib.distributed_settings(fv)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  fv = _distributed(*argv)
  flags.DEFINE_integer("verbosity", 0, "", flag_values=fv)
  with pytest.raises(app.UsageError, match="^" + re.escape(message)):
    config_lib.begin(["prog"], fv)
