"""absl flags generated from an experiment's config dataclass, and back.

Each binary's flags are its ``Config``'s fields: one flag per field, with the
field's default, type and help (``dataclasses.field(metadata={"help": ...,
"choices": ...})``), so a field is declared once. Fields named in ``sweep``
become comma-separated list flags, and :func:`configs_from_flags` returns one
config per combination of their values (``--length=20,50,100``).

    >>> import dataclasses
    >>> from absl import flags
    >>> from urnn_jax import config as config_lib
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...   hidden: int = dataclasses.field(default=8, metadata={"help": "Hidden size."})
    ...   models: tuple[str, ...] = ("rnn",)
    ...   rate: float | None = None
    >>> fv = flags.FlagValues()
    >>> config_lib.define_flags(Config, flag_values=fv, sweep=("hidden",))
    >>> _ = fv(["prog", "--hidden=4,16", "--models=rnn,urnn"])
    >>> [c.hidden for c in config_lib.configs_from_flags(Config, fv, sweep=("hidden",))]
    [4, 16]
    >>> config_lib.configs_from_flags(Config, fv, sweep=("hidden",))[0].models
    ('rnn', 'urnn')
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
from typing import Any, Mapping, Sequence

from absl import flags

_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def field(default, help: str, choices=None):  # pylint: disable=redefined-builtin
  """A config field with its flag's help text (and enum ``choices``): declared once."""
  meta = {"help": help}
  if choices is not None:
    meta["choices"] = list(choices)
  return dataclasses.field(default=default, metadata=meta)


def _field_kind(field: dataclasses.Field) -> tuple[str, bool]:
  """``(kind, optional)``: kind is int/float/str/bool, or ``tuple[int]``/``tuple[str]``."""
  t = field.type
  ann = t if isinstance(t, str) else (t.__name__ if isinstance(t, type) else str(t))
  ann = ann.replace(" ", "")
  optional = ann.endswith("|None") or ann.startswith("Optional[")
  ann = ann.removesuffix("|None")
  if ann.startswith("Optional["):
    ann = ann[len("Optional["):-1]
  if ann.startswith("tuple["):
    inner = ann[len("tuple["):].split(",")[0].rstrip("]")
    return f"tuple[{inner}]", optional
  if ann not in _SCALARS:
    raise TypeError(f"config field {field.name!r}: unsupported type {field.type!r} for a flag.")
  return ann, optional


def _default(field: dataclasses.Field):
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
    return field.default_factory()  # type: ignore[misc]
  return None


def define_flags(
    config_cls,
    *,
    flag_values: flags.FlagValues = flags.FLAGS,
    sweep: Sequence[str] = (),
    skip: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
    module_name: str | None = None,
) -> None:
  """Defines one absl flag per field of the dataclass ``config_cls``.

  ``sweep``: fields defined as list flags (one config per value);
  ``skip``: fields without a flag; ``defaults``: flag defaults that differ
  from the field defaults; ``aliases``: ``{old_name: field}``, older flag
  names kept working. The flags belong to ``module_name`` (default: the
  calling module, so a binary's ``--help`` lists them).
  """
  if module_name is None:
    module_name = sys._getframe(1).f_globals.get("__name__", "")
    if module_name == "__main__":
      module_name = sys.argv[0]  # how absl names the main module's flags
  kw = {"flag_values": flag_values, "module_name": module_name}
  defaults = dict(defaults or {})
  for field in dataclasses.fields(config_cls):
    if field.name in skip:
      continue
    kind, _ = _field_kind(field)
    default = defaults.get(field.name, _default(field))
    help_text = field.metadata.get("help", field.name.replace("_", " ") + ".")
    choices = field.metadata.get("choices")
    name = field.name
    if field.name in sweep or kind.startswith("tuple["):
      values = default if isinstance(default, (list, tuple)) else ([] if default is None else [default])
      flags.DEFINE_list(name, [str(v) for v in values], help_text
                        + (f" Some of {list(choices)}." if choices else "")
                        + (" Comma-separated: one run per value." if field.name in sweep else ""),
                        **kw)
    elif kind == "bool":
      flags.DEFINE_bool(name, default, help_text, **kw)
    elif kind == "int":
      flags.DEFINE_integer(name, default, help_text, **kw)
    elif kind == "float":
      flags.DEFINE_float(name, default, help_text, **kw)
    elif choices:
      flags.DEFINE_enum(name, default, list(choices), help_text, **kw)
    else:
      flags.DEFINE_string(name, default, help_text, **kw)
  for old, new in (aliases or {}).items():
    flags.DEFINE_alias(old, new, **kw)


class FlagError(ValueError):
  """A flag's value cannot be converted to its config field."""


def _convert(field: dataclasses.Field, kind: str, value, *, as_list: bool):
  inner = kind[len("tuple["):-1] if kind.startswith("tuple[") else kind
  cast = _SCALARS[inner]
  if value is None:
    return None
  if not as_list:
    return value
  try:
    return [cast(v) for v in value]
  except ValueError:
    raise FlagError(f"--{field.name} must be {inner} values, got {','.join(value)}.") from None


def configs_from_flags(
    config_cls,
    flag_values: flags.FlagValues = flags.FLAGS,
    *,
    sweep: Sequence[str] = (),
    skip: Sequence[str] = (),
    base=None,
    only_present: bool = False,
) -> list:
  """One config per combination of the ``sweep`` flags' values (others fixed).

  ``base``: the config whose values the flags replace (default:
  ``config_cls()``); with ``only_present``, only flags given on the command
  line replace them (a preset such as ``--paper`` keeps its values).

  Raises:
    FlagError: a flag's values cannot be converted (e.g. ``--length=a``).
  """
  base = config_cls() if base is None else base
  fixed, swept = {}, {}
  for field in dataclasses.fields(config_cls):
    if field.name in skip:
      continue
    if only_present and not flag_values[field.name].present:
      continue
    kind, _ = _field_kind(field)
    value = flag_values[field.name].value
    if field.name in sweep:
      values = _convert(field, kind, value, as_list=True)
      if not values:
        raise FlagError(f"--{field.name} needs at least one value.")
      swept[field.name] = values
    elif kind.startswith("tuple["):
      fixed[field.name] = tuple(_convert(field, kind, value, as_list=True))
    else:
      fixed[field.name] = value
  base = dataclasses.replace(base, **fixed)
  names = list(swept)
  return [dataclasses.replace(base, **dict(zip(names, combo)))
          for combo in itertools.product(*(swept[n] for n in names))]


def check_ints(config, *, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
  """The one validation helper for integer fields: ValueError naming the field and its value.

  ``positive``: fields that must be ints >= 1; ``non_negative``: ints >= 0
  (0 usually means "off"). Booleans are not ints here.

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class C:
    ...   steps: int = 0
    >>> check_ints(C(), positive=("steps",))
    Traceback (most recent call last):
    ...
    ValueError: steps must be a positive int, got 0.
  """
  for names, low, what in ((positive, 1, "a positive int"), (non_negative, 0, "an int >= 0 (0: off)")):
    for name in names:
      v = getattr(config, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be {what}, got {v!r}.")


def binary_configs(config_cls, flag_values: flags.FlagValues = flags.FLAGS, **kwargs) -> list:
  """:func:`configs_from_flags`, each config ``validate()``-d; any ValueError (a
  :class:`FlagError` included) becomes a one-line ``absl.app.UsageError``."""
  from absl import app  # pylint: disable=g-import-not-at-top

  try:
    configs = configs_from_flags(config_cls, flag_values, **kwargs)
    for c in configs:
      c.validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  return configs


# ----------------------------------------------------------------------------
# Several processes (hosts): the flags every binary shares.

DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "local_device_ids",
                     "initialization_timeout")


def define_distributed_flags(flag_values: flags.FlagValues = flags.FLAGS, module_name: str | None = None) -> None:
  """Defines the flags of a run over several processes (one per host, or several on one machine).

  ``--num_processes`` (default 1: this process alone, no distributed runtime,
  exactly the one-process run), ``--process_id``, ``--coordinator_address``
  (``host:port`` of process 0, the same in every process),
  ``--local_device_ids`` and ``--initialization_timeout``. :func:`begin` passes
  them to :func:`urnn_jax.parallel.initialize_distributed`. Every binary calls
  this once in its ``define_flags``.
  """
  if module_name is None:
    module_name = sys._getframe(1).f_globals.get("__name__", "")
    if module_name == "__main__":
      module_name = sys.argv[0]
  kw = {"flag_values": flag_values, "module_name": module_name}
  flags.DEFINE_integer("num_processes", 1, "Processes of the run (several hosts, or several processes on one"
                       " machine); 1: this process alone. Start the same command in every process with its"
                       " own --process_id.", **kw)
  flags.DEFINE_integer("process_id", 0, "This process's index in [0, --num_processes); process 0 writes"
                       " every result file, plot and log.", **kw)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator (the same in every"
                      " process); needed with --num_processes > 1.", **kw)
  flags.DEFINE_list("local_device_ids", [], "The devices this process uses (e.g. one GPU per process:"
                    " --local_device_ids=0 in each); empty: every device it sees.", **kw)
  flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for every process to join.", **kw)


def distributed_settings(flag_values: flags.FlagValues = flags.FLAGS) -> dict | None:
  """The several-process flags, checked: None for one process, else
  :func:`urnn_jax.parallel.initialize_distributed`'s arguments.

  Raises:
    FlagError: one line naming the flag and its value (``--num_processes=2``
      without ``--coordinator_address``, a ``--process_id`` outside
      ``[0, --num_processes)``, a coordinator that is not ``host:port``, ...).
  """
  n, pid = flag_values["num_processes"].value, flag_values["process_id"].value
  address = flag_values["coordinator_address"].value
  ids = flag_values["local_device_ids"].value or []
  timeout = flag_values["initialization_timeout"].value
  if n < 1:
    raise FlagError(f"--num_processes={n}; expected a positive int (1: one process).")
  if n == 1:
    for name, given in (("process_id", pid != 0), ("coordinator_address", bool(address)),
                        ("local_device_ids", bool(ids))):
      if given:
        raise FlagError(f"--{name}={flag_values[name].value if name != 'local_device_ids' else ','.join(ids)}"
                        " needs --num_processes > 1 (the run has one process).")
    return None
  if not address:
    raise FlagError(f"--num_processes={n} needs --coordinator_address (host:port of process 0).")
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise FlagError(f"--coordinator_address={address!r}; expected host:port, e.g. 127.0.0.1:12345.")
  if not 0 <= pid < n:
    raise FlagError(f"--process_id={pid}; expected an int in [0, {n}) (--num_processes={n}).")
  try:
    device_ids = [int(i) for i in ids]
  except ValueError:
    device_ids = [-1]
  if any(i < 0 for i in device_ids):
    raise FlagError(f"--local_device_ids={','.join(ids)}; expected non-negative ints.")
  if timeout < 1:
    raise FlagError(f"--initialization_timeout={timeout}; expected a positive number of seconds.")
  return {"coordinator_address": address, "num_processes": n, "process_id": pid,
          "local_device_ids": device_ids or None, "initialization_timeout": timeout}


def start_distributed(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  """Checks the several-process flags and starts JAX's distributed runtime (a no-op for one process).

  Must run before anything touches a device (:func:`begin` calls it first).
  Returns True when it started the runtime.
  """
  settings = distributed_settings(flag_values)
  if settings is None:
    return False
  from urnn_jax import parallel  # pylint: disable=g-import-not-at-top

  return parallel.initialize_distributed(settings.pop("coordinator_address"), settings.pop("num_processes"),
                                         settings.pop("process_id"), **settings)


def printer():
  """``print`` in process 0, a no-op in the other processes (only process 0 writes logs)."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.distributed.is_initialized() and jax.process_index() != 0:
    return lambda *args, **kwargs: None
  return functools.partial(print, flush=True)


def begin(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """A binary's common start: no positional arguments; orbax's INFO logs (every
  save) off unless ``--verbosity`` is given; with the several-process flags
  (:func:`define_distributed_flags`), JAX's distributed runtime started
  before anything touches a device. Bad flags: a one-line ``UsageError``."""
  from absl import app, logging  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if "num_processes" in flag_values:
    try:
      start_distributed(flag_values)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
