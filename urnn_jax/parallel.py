"""Data- and realization-parallel training over many devices and hosts.

Two kinds of parallelism, one device mesh (:func:`make_mesh`) with two axes:

* ``"data"`` (:data:`DATA`): the *batch* is split over these devices; the
  train state is *replicated* (every device holds the whole state). Each
  device computes its part of the loss; the gradient of the global mean loss
  is assembled by an all-reduce that the compiler inserts.
* ``"realizations"`` (:data:`REALIZATIONS`): a ``jax.vmap``-ed sweep (many
  independent realizations trained together, the state stacked on a leading
  axis) is split over these devices; each device trains its own realizations.
  There is no communication between them.

What is sharded, and how:

* the batch: :func:`shard_batch` (the global batch, leading axis over
  ``"data"``), or :func:`shard_local_batch` (each process passes only its
  own slice, :func:`local_batch_slice`);
* the state: :func:`replicate` (data-parallel) or :func:`shard_realizations`
  (the stacked axis over ``"realizations"``; ``axes`` like ``vmap``'s
  ``in_axes``, e.g. ``TrainState(None, 0, 0)``: the step count replicated);
* the step: :func:`sharded_step` is ``jax.jit`` with ``in_shardings`` and
  ``out_shardings`` (sharded jit: the compiler partitions the *global*
  program). :func:`realization_step` vmaps a step over realizations.

The model and the optax constraints know nothing of this. A replicated
recurrent matrix W gets the all-reduced gradient on every device, and its
constraint (e.g. the SVD projection) runs on identical copies; a
realization-sharded W's constraint runs where its shard lives (the batched
SVD is partitioned along the realization axis, no gather).

Results do not depend on the device count. The jitted program is the
one-device program on the global batch (the loss is the mean over the global
batch, not a mean of per-device means); only the order of the floating-point
sums inside the gradient's all-reduce changes, so a data-parallel run agrees
with the one-device run to rounding (about 1e-15 relative in float64, step
after step). Realizations never interact, so a realization-sharded sweep gives
each realization's parameters of the unsharded sweep. Randomness comes from
``(seed, step)`` and the realization index, never from a device index, and
every process builds the same global batch (or its slice of it), so the same
run on 1, 4 or 64 devices draws the same data.

Several hosts (processes): call :func:`initialize_distributed` first thing
(before anything touches a device; the binaries' ``--num_processes``,
``--process_id`` and ``--coordinator_address``,
:func:`urnn_jax.config.define_distributed_flags`, do it in
:func:`urnn_jax.config.begin`); every process then runs the same program
on the global mesh (:func:`local_mesh`: the binaries' ``--devices`` over
all processes), feeding its slice of each batch; only the primary
process (:func:`is_primary`) writes results and logs. Checkpoints
(:class:`urnn_jax.training.Checkpoints`, orbax) are saved by *all* processes
together (orbax writes each shard once and the metadata from the primary).
``Checkpoints.restore`` (and so :func:`urnn_jax.training.fit`'s resume) puts a
checkpoint onto any mesh (any device count): the target's leaves carry the
new shardings (placed by this module, or :func:`abstract_like`; see
:func:`restore_target`); :func:`to_host` reads a state spread over processes
(for checksums and finiteness checks).

Traps:

* ``shard_map`` with a replicated parameter (``in_specs=P()``) and a
  per-shard loss: the gradient with respect to the parameter comes back
  *summed* over the shards (the transpose of the implicit broadcast is a
  ``psum``), so a per-shard mean loss gives ``n_devices`` times the global
  gradient, and an optimiser's step (Adam's is scale-free; SGD's is not)
  silently changes with the device count. Sharded jit has no such trap: write
  the loss on the global batch and let the compiler partition it. This
  module uses sharded jit throughout.
* ``jax.make_mesh`` makes *explicit* axes by default; orbax does not keep
  axis types on restore. :func:`make_mesh` builds ``Auto`` axes.
* A donated state (``sharded_step(..., donate=True)``, the default) must not
  be used after the call; keep the returned one.
* Forced host devices (``--xla_force_host_platform_device_count``, for tests
  and benchmarks on CPU) share the machine's cores, and in jaxlib 0.10 as
  many of them as there are cores can *hang*: a batched LAPACK kernel (the
  SVD projection of several stacked 32 x 32 or larger W on one device, i.e.
  a realization-sharded sweep with more than one realization per device)
  waits for the CPU thread pool that the devices' programs occupy. Keep
  fewer forced devices than cores, one realization per device, or small W
  (n <= 16 was fine). Real accelerators, and one CPU device per process,
  are not affected.
* In multi-process runs, anything that reads a value on the host must read a
  value this process holds: replicated arrays (the data-parallel state, the
  metrics of :func:`sharded_step`) are fine; a realization-sharded state
  spread over processes needs :func:`to_host` (a collective: every process
  calls it).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, Sharding

from urnn_jax import training

PyTree = Any

DATA = "data"
REALIZATIONS = "realizations"
AXES = (DATA, REALIZATIONS)


# ----------------------------------------------------------------------------
# The mesh.


def make_mesh(data: int | None = None, realizations: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ``(data, realizations)`` mesh of ``devices`` (default: ``jax.devices()``, all processes).

  Args:
    data: the size of the ``"data"`` axis (batch parallelism); None: all the
      devices that ``realizations`` leaves, ``len(devices) // realizations``.
    realizations: the size of the ``"realizations"`` axis (sweep parallelism).
    devices: the devices, in order; the data axis is the outer one, so with
      ``jax.devices()`` (ordered by process) each process holds a contiguous
      slice of every batch. Pass e.g. ``jax.devices()[:2]`` to use fewer.

  Both axes are ``AxisType.Auto`` (sharded jit propagates shardings; orbax
  restores them as they were). The devices keep the order given (this is
  ``Mesh(np.array(devices).reshape(data, realizations))``, not
  ``jax.make_mesh``, which may reorder them).

  Raises:
    ValueError: a size that is not a positive int, more devices asked for than
      exist, ``data * realizations`` other than the number of devices, or a
      ``realizations`` that does not divide it (the message names the
      parameter, its value and what was expected).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if n == 0:
    raise ValueError("make_mesh: devices is empty; expected at least one device.")
  for name, value in (("data", data), ("realizations", realizations)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or value < 1):
      raise ValueError(f"make_mesh: {name}={value!r}; expected a positive int"
                       f"{' or None' if name == 'data' else ''}.")
  if realizations > n:
    raise ValueError(f"make_mesh: realizations={realizations} asks for {realizations} devices, but"
                     f" only {n} exist; expected realizations <= {n}.")
  if data is None:
    if n % realizations:
      raise ValueError(f"make_mesh: realizations={realizations} does not divide the {n} devices;"
                       f" expected a divisor of {n} (or pass data= and devices=).")
    data = n // realizations
  want = int(data) * int(realizations)
  if want > n:
    raise ValueError(f"make_mesh: data={data} x realizations={realizations} asks for {want} devices,"
                     f" but only {n} exist; expected data * realizations <= {n}.")
  if want != n:
    raise ValueError(f"make_mesh: data={data} x realizations={realizations} = {want} does not match"
                     f" the {n} devices; expected data * realizations == {n}, or pass"
                     f" devices=jax.devices()[:{want}] to use fewer.")
  grid = np.empty(n, dtype=object)
  grid[:] = devices
  return Mesh(grid.reshape(int(data), int(realizations)), AXES, axis_types=(AxisType.Auto,) * 2)


def axis_size(mesh: Mesh, axis: str) -> int:
  """The size of ``axis`` in ``mesh`` (1 when the mesh has no such axis)."""
  return int(dict(mesh.shape).get(axis, 1))


def check_divides(name: str, value: int, mesh: Mesh, axis: str = DATA) -> None:
  """Raises ValueError unless ``value`` (the parameter ``name``) is a multiple of ``axis``'s size.

  For flags: ``check_divides("batch_size", FLAGS.batch_size, mesh)``.
  """
  size = axis_size(mesh, axis)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or value % size:
    raise ValueError(f"{name}={value!r} is not a multiple of the mesh's {axis!r} axis size {size}"
                     f" ({size} devices); expected a positive multiple of {size}.")


def describe(mesh: Mesh) -> dict:
  """The mesh in JSON terms (for results files): axis sizes, devices, processes."""
  return {
      "axes": {k: int(v) for k, v in dict(mesh.shape).items()},
      "num_devices": int(mesh.devices.size),
      "num_processes": jax.process_count(),
      "platform": mesh.devices.flat[0].platform,
  }


# ----------------------------------------------------------------------------
# Shardings.


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole value."""
  return NamedSharding(mesh, PartitionSpec())


def _spec(placements: dict[int, str]) -> PartitionSpec:
  """``{axis: mesh axis}`` as a PartitionSpec (the axes not named: replicated)."""
  return PartitionSpec(*[placements.get(i) for i in range(max(placements) + 1)])


def batch_sharding(mesh: Mesh, axis: int = 0, *, realization_axis: int | None = None) -> NamedSharding:
  """Axis ``axis`` over ``"data"`` (and ``realization_axis``, if given, over ``"realizations"``).

  ``batch_sharding(mesh)``: a data-parallel batch ``(B, ...)``;
  ``batch_sharding(mesh, 1, realization_axis=0)``: a sweep's own data per
  realization ``(R, B, ...)``. Leaves of any rank beyond those axes.
  """
  if axis < 0 or (realization_axis is not None and (realization_axis < 0 or realization_axis == axis)):
    raise ValueError(f"batch_sharding: axis={axis}, realization_axis={realization_axis}; expected"
                     " two different non-negative axes.")
  placements = {axis: DATA}
  if realization_axis is not None:
    placements[realization_axis] = REALIZATIONS
  return NamedSharding(mesh, _spec(placements))


def realization_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Axis ``axis`` (the stacked realizations) over ``"realizations"``; the rest replicated."""
  if axis is None:
    return replicated_sharding(mesh)
  if axis < 0:
    raise ValueError(f"realization_sharding: axis={axis}; expected a non-negative axis or None.")
  return NamedSharding(mesh, _spec({axis: REALIZATIONS}))


def _map_prefix(fn, prefix, tree, is_leaf):
  """``fn(prefix_leaf, subtree)`` for each leaf of ``prefix`` (a prefix of ``tree``), as a full tree."""
  return jax.tree.map(lambda p, sub: jax.tree.map(lambda x: fn(p, x), sub), prefix, tree,
                      is_leaf=is_leaf)


def realization_shardings(mesh: Mesh, tree: PyTree, axes: Any = 0) -> PyTree:
  """A sharding per leaf of ``tree``: ``axes`` over ``"realizations"``.

  ``axes`` is a prefix of ``tree``, like ``vmap``'s ``in_axes``.

  ``axes=0``: every leaf's leading axis; ``TrainState(None, 0, 0)``: the step
  count replicated, parameters and optimiser state stacked on axis 0.
  """
  return _map_prefix(lambda a, _: realization_sharding(mesh, a), axes, tree,
                     is_leaf=lambda a: a is None)


def shardings_of(tree: PyTree) -> PyTree:
  """The sharding of every (jax.Array or ShapeDtypeStruct) leaf of ``tree``."""
  return jax.tree.map(lambda x: x.sharding, tree)


# ----------------------------------------------------------------------------
# Placing values.


def _leaf_name(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _check_axis(fn: str, param: str, what: str, tree: PyTree, axis: int, mesh: Mesh,
                mesh_axis: str) -> None:
  """ValueError unless every leaf of ``tree`` (the parameter ``param``) splits over ``mesh_axis``."""
  size = axis_size(mesh, mesh_axis)
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    shape = np.shape(x)
    if len(shape) <= axis:
      raise ValueError(f"{fn}: {param} leaf {_leaf_name(path)} has shape {shape}, no axis {axis} to"
                       f" split over {mesh_axis!r}; expected rank > {axis}.")
    if shape[axis] % size:
      raise ValueError(f"{fn}: {param}'s {what} is {shape[axis]} (axis {axis} of leaf {_leaf_name(path)},"
                       f" shape {shape}), not a multiple of the mesh's {mesh_axis!r} axis size {size};"
                       f" expected a multiple of {size}.")


def _host_array(x) -> np.ndarray:
  if isinstance(x, (np.ndarray, np.generic)):
    return np.asarray(x)
  arr = np.asarray(x)
  if not isinstance(x, jax.Array):  # Python scalars: the dtype jnp.asarray would give.
    arr = arr.astype(jax.dtypes.canonicalize_dtype(arr.dtype))
  return arr


def _place_leaf(x, sharding: Sharding):
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    # Already global (all processes hold it): reshard on the devices.
    return x if x.sharding == sharding else jax.device_put(x, sharding)
  if jax.process_count() == 1:
    return jax.device_put(x if isinstance(x, jax.Array) else _host_array(x), sharding)
  # Several processes, every one holding the whole value: each places only
  # the shards that live on its own devices.
  arr = _host_array(x)
  return jax.make_array_from_callback(arr.shape, sharding, lambda index: arr[index])


def place(tree: PyTree, shardings: Any) -> PyTree:
  """``tree`` as global arrays with ``shardings`` (one Sharding, or a tree prefix of them).

  Every process passes the whole (same) value and places only the shards of
  its own devices; in one process this is ``jax.device_put``, which returns
  a leaf that is already placed so as is (the same buffers: a step that
  donates its input then consumes it).
  """
  if isinstance(shardings, Sharding):
    return jax.tree.map(lambda x: _place_leaf(x, shardings), tree)
  return _map_prefix(lambda s, x: _place_leaf(x, s), shardings, tree,
                     is_leaf=lambda s: isinstance(s, Sharding))


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
  """``tree`` (e.g. a TrainState) replicated on every device of ``mesh`` (data parallelism)."""
  return place(tree, replicated_sharding(mesh))


def shard_realizations(mesh: Mesh, tree: PyTree, axes: Any = 0) -> PyTree:
  """A stacked sweep ``tree`` with ``axes`` (a prefix, like ``vmap``'s ``in_axes``) over ``"realizations"``.

  Raises:
    ValueError: a stacked axis whose size (the number of realizations) the
      ``"realizations"`` axis size does not divide.
  """
  def check(a, sub):
    if a is not None:
      _check_axis("shard_realizations", "tree", "number of realizations", sub, a, mesh, REALIZATIONS)
    return a

  jax.tree.map(check, axes, tree, is_leaf=lambda a: a is None)
  return place(tree, realization_shardings(mesh, tree, axes))


def shard_batch(mesh: Mesh, batch: PyTree, axis: int = 0, *, realization_axis: int | None = None) -> PyTree:
  """The *global* ``batch`` with axis ``axis`` over ``"data"`` (see :func:`batch_sharding`).

  Every process passes the same global batch (each places only its slices);
  to have each process load only its part, use :func:`shard_local_batch`.

  Raises:
    ValueError: a batch size (or, with ``realization_axis``, a realization
      count) that the mesh axis size does not divide.
  """
  _check_axis("shard_batch", "batch", "batch size", batch, axis, mesh, DATA)
  if realization_axis is not None:
    _check_axis("shard_batch", "batch", "number of realizations", batch, realization_axis, mesh,
                REALIZATIONS)
  return place(batch, batch_sharding(mesh, axis, realization_axis=realization_axis))


def local_batch_slice(mesh: Mesh, batch_size: int) -> slice:
  """The rows of a global batch of ``batch_size`` that this process's devices hold.

  A process loads ``global_batch[local_batch_slice(mesh, B)]`` and passes it
  to :func:`shard_local_batch`. In one process: ``slice(0, batch_size)``.
  """
  check_divides("batch_size", batch_size, mesh, DATA)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((int(batch_size),))
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                 for s in index_map.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:
    raise ValueError("local_batch_slice: this process's devices do not hold a contiguous slice of"
                     " the batch; build the mesh with make_mesh (devices in jax.devices() order).")
  return slice(start, stop)


def shard_local_batch(mesh: Mesh, local_batch: PyTree, axis: int = 0) -> PyTree:
  """Global arrays from each process's *own* slice of the batch.

  ``jax.make_array_from_process_local_data`` for every leaf.

  ``local_batch``: this process's rows, :func:`local_batch_slice` of the
  global batch (the global batch is the processes' slices in process order).

  Raises:
    ValueError: a local batch size that this process's share of the
      ``"data"`` axis does not divide.
  """
  sharding = batch_sharding(mesh, axis)
  global_rows = axis_size(mesh, DATA)
  local_rows = len({idx[0] for idx in _mesh_indices(mesh)})
  for path, x in jax.tree_util.tree_leaves_with_path(local_batch):
    shape = np.shape(x)
    if len(shape) <= axis or shape[axis] % local_rows:
      raise ValueError(f"shard_local_batch: local batch size {shape[axis] if len(shape) > axis else None}"
                       f" (axis {axis} of leaf {_leaf_name(path)}, shape {shape}) is not a multiple of"
                       f" this process's {local_rows} of the {global_rows} 'data' shards; expected"
                       f" a multiple of {local_rows}.")

  def one(x):
    arr = _host_array(x)
    global_shape = list(arr.shape)
    global_shape[axis] = arr.shape[axis] // local_rows * global_rows
    return jax.make_array_from_process_local_data(sharding, arr, tuple(global_shape))

  return jax.tree.map(one, local_batch)


def _mesh_indices(mesh: Mesh):
  """The ``(data, realization)`` mesh coordinates of this process's devices."""
  mine = set(jax.local_devices())
  return [idx for idx, d in np.ndenumerate(mesh.devices) if d in mine]


# ----------------------------------------------------------------------------
# The step.


def sharded_step(step_fn, mesh: Mesh, state_sharding: Any, batch_sharding: Any, *,
                 metrics_sharding: Any = None, donate: bool = True):
  """``step_fn(state, batch) -> (state, metrics)`` jitted with in/out shardings on ``mesh``.

  Args:
    step_fn: e.g. :func:`urnn_jax.training.make_train_step`'s step, or its
      :func:`realization_step` for a sweep.
    mesh: the mesh (``metrics_sharding``'s default).
    state_sharding: a Sharding or a tree (prefix) of them, in and out:
      :func:`replicated_sharding` (data parallelism) or
      :func:`realization_shardings` (a sweep).
    batch_sharding: the batch's, e.g. the module function ``batch_sharding(mesh)``.
    metrics_sharding: the metrics'; default replicated, so every process can
      read them (``fit`` fetches them at evaluations).
    donate: donate the input state's buffers to the output (the caller must
      use the returned state).

  Returns the ``jax.jit`` wrapper (it has ``.lower`` for ahead-of-time
  compilation).
  """
  if metrics_sharding is None:
    metrics_sharding = replicated_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, metrics_sharding),
                 donate_argnums=(0,) if donate else ())


def realization_step(step_fn, state_axes: Any = training.TrainState(None, 0, 0), batch_axes: Any = 0):
  """``step_fn`` vmapped over realizations: ``in_axes=(state_axes, batch_axes)``, metrics stacked.

  The default ``state_axes`` keeps a :class:`~urnn_jax.training.TrainState`'s
  step count unbatched (one count for the sweep). ``batch_axes=None``: all
  realizations see the same batch. The metrics come out per realization,
  shape ``(R,)``; :func:`urnn_jax.training.fit` wants scalars, so a sweep
  trained with it reduces them in its step (e.g. the mean loss, ``all`` of
  ``finite``).
  """
  return jax.vmap(step_fn, in_axes=(state_axes, batch_axes), out_axes=(state_axes, 0))


# ----------------------------------------------------------------------------
# Several hosts.


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
                           cpu_collectives: str | None = "gloo", initialization_timeout: int = 300) -> bool:
  """``jax.distributed.initialize`` for a run of ``num_processes`` processes; a no-op for 1 / None.

  Call it first thing, before anything touches a device. Every process
  passes the same ``coordinator_address`` (``host:port`` of process 0) and
  its own ``process_id``. ``cpu_collectives``: the CPU backend's
  cross-process collectives (``"gloo"``; ``None``: leave the setting). Returns
  True when this call initialized the runtime (False: one process, or
  already initialized).

  Raises:
    ValueError: ``num_processes`` > 1 without a ``coordinator_address``, or a
      ``process_id`` outside ``[0, num_processes)``.
  """
  if num_processes is None or num_processes == 1:
    return False
  if (isinstance(num_processes, bool) or not isinstance(num_processes, (int, np.integer))
      or num_processes < 1):
    raise ValueError(f"initialize_distributed: num_processes={num_processes!r}; expected a positive int.")
  if not coordinator_address:
    raise ValueError(f"initialize_distributed: num_processes={num_processes} needs coordinator_address"
                     " ('host:port' of process 0); got none.")
  if (isinstance(process_id, bool) or not isinstance(process_id, (int, np.integer))
      or not 0 <= process_id < num_processes):
    raise ValueError(f"initialize_distributed: process_id={process_id!r}; expected an int in"
                     f" [0, {num_processes}).")
  if jax.distributed.is_initialized():
    return False
  if cpu_collectives is not None:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address, num_processes=int(num_processes),
                             process_id=int(process_id), local_device_ids=local_device_ids,
                             initialization_timeout=initialization_timeout)
  return True


def is_primary() -> bool:
  """True in process 0, the one that writes results, histories and logs."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process gets here (a no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices(name)


def primary_ok(ok: bool) -> bool:
  """Process 0's ``ok`` in every process: whether a step that process 0 alone did (e.g. building
  files the others then read) succeeded, so that every process raises instead of waiting for a
  process that stopped. A collective (every process calls it; it waits like :func:`barrier`);
  in one process: ``ok``.
  """
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(ok))))


# ----------------------------------------------------------------------------
# Checkpoints.

# Reading and restoring a (possibly sharded) state live in urnn_jax.training, which
# Checkpoints and fit use; re-exported here beside the placement functions.
to_host = training.to_host
restore_target = training.restore_target


def abstract_like(tree: PyTree, shardings: Any = None) -> PyTree:
  """``jax.ShapeDtypeStruct`` leaves of ``tree``'s shapes and dtypes, with shardings.

  ``shardings``: None: each jax.Array leaf's own (a ShapeDtypeStruct leaf is
  kept); one Sharding, or a tree prefix of them: those. The restore target
  that puts a checkpoint on a (new) mesh:
  ``abstract_like(state, shardings_of(new_state))``.
  """
  if shardings is None:
    return jax.tree.map(training.abstract_leaf, tree)
  if isinstance(shardings, Sharding):
    return jax.tree.map(lambda x: training.abstract_leaf(x, shardings), tree)
  return _map_prefix(lambda s, x: training.abstract_leaf(x, s), shardings, tree,
                     is_leaf=lambda s: isinstance(s, Sharding))




def local_mesh(count: int, devices: int = 0, *, axis: str = DATA, name: str = "batch_size") -> Mesh:
  """A one-axis mesh for sharding ``count`` items over ``axis``: the binaries' ``--devices``.

  One process: ``devices`` of this process's devices (0: the most that
  divide ``count``, so the default uses every device when it can).

  Several processes (:func:`initialize_distributed`): ``devices`` counts the
  devices of *all* processes (0: the most that divide ``count`` with the
  same number from every process); each process gives ``devices /
  process_count`` of its own devices (its first ones), in process order, so
  each process holds a contiguous slice of every batch (or of the
  realizations). Every process must take part: ``devices`` is a multiple of
  the process count.

  Raises:
    ValueError: more devices asked for than exist, a ``devices`` that the
      process count does not divide, or a ``count`` (named ``name``) that
      ``devices`` does not divide.
  """
  local = jax.local_devices()
  procs = jax.process_count()
  if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0:
    raise ValueError(f"devices={devices!r}; expected an int >= 0 (0: as many as divide {name}).")
  if procs == 1:
    n = devices or max(d for d in range(1, len(local) + 1) if count % d == 0)
    if n > len(local):
      raise ValueError(f"devices={n}; only {len(local)} local devices exist.")
    chosen = local[:n]
  else:
    if devices:
      if devices % procs:
        raise ValueError(f"devices={devices} is not a multiple of the {procs} processes; expected a"
                         f" multiple of {procs} (every process gives the same number of devices).")
      per = devices // procs
      if per > len(local):
        raise ValueError(f"devices={devices} asks for {per} per process; only {len(local)} local"
                         f" devices exist in each ({procs * len(local)} in all).")
    else:
      fits = [d for d in range(1, len(local) + 1) if count % (d * procs) == 0]
      if not fits:
        raise ValueError(f"{name}={count} is not a multiple of the {procs} processes; expected a"
                         f" multiple of {procs} (each process holds an equal slice).")
      per = max(fits)
    by_process = {}
    for d in jax.devices():
      by_process.setdefault(d.process_index, []).append(d)
    chosen = [d for p in sorted(by_process) for d in by_process[p][:per]]
  n = len(chosen)
  mesh = make_mesh(data=n, devices=chosen) if axis == DATA else make_mesh(
      data=1, realizations=n, devices=chosen)
  check_divides(name, count, mesh, axis)
  return mesh
