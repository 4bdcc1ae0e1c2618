"""urnn_jax.parallel: data- and realization-parallel training, several processes.

The checks that need several devices run in subprocesses with forced host
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), in float64,
against the one-device computation on the same global batch:

* ``four``: one process, 4 devices: a data-parallel step (batch over 4
  devices, state replicated) == the one-device step, a realization-sharded
  vmapped sweep (over 2 and 4 devices) == the unsharded sweep, the errors,
  and checkpoints of the 4-device states;
* ``multiprocess``: two processes on 127.0.0.1, 2 devices each (gloo
  collectives), each feeding only its half of every global batch: the same
  parameters in both == the one-device run; a multi-process checkpoint;
* ``restored``: one process, 2 devices: both checkpoints restore onto 2
  devices (another device count) with equal values, and training resumes.

The binaries: ``python -m train.memory_tasks`` as two processes on 127.0.0.1
(its multi-process flags) and as one, equal to float32 rounding, files and
output from process 0 only, and the two-process checkpoint resumed in one
process; the language model's streams over 2 devices == 1 device; a bad
multi-process flag is a one-line usage error.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120

# The problem every script shares: the model, in float64.
PRELUDE = textwrap.dedent("""
    import json, os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax
    import urnn_jax
    from urnn_jax import optim, parallel, training

    BATCH, T, M, HIDDEN, OUT, STEPS, R = 8, 5, 3, 8, 2, 3, 4
    model = urnn_jax.SequenceRegressor(urnn_jax.OrthogonalRNNCell(HIDDEN), OUT)
    tx = optim.constrained(optax.adam(1e-2), optim.orthogonal_projection())

    def loss_fn(params, batch):
      x, y = batch
      return jnp.mean(jnp.square(model.apply({"params": params}, x) - y)), {}

    step_fn = training.make_train_step(loss_fn, tx)

    def init_params(key):
      params = model.init(key, jnp.zeros((1, T, M)))["params"]
      return jax.tree.map(lambda a: a.astype(jnp.float64), params)

    def init_state(seed=0):
      return training.create_train_state(init_params(jax.random.key(seed)), tx)

    def init_sweep():
      keys = jax.random.split(jax.random.key(1), R)
      params = jax.vmap(init_params)(keys)
      return training.TrainState(jnp.zeros((), jnp.int32), params, jax.vmap(tx.init)(params))

    def batch(s, lead=()):
      kx, ky = jax.random.split(jax.random.fold_in(jax.random.key(7), s))
      x = jax.random.normal(kx, lead + (BATCH, T, M), jnp.float64)
      y = jnp.sin(jnp.cumsum(x, axis=-2))[..., :OUT] + 0.1 * jax.random.normal(ky, lead + (BATCH, T, OUT))
      return np.asarray(x), np.asarray(y)

    def flat(tree):
      return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
              jax.tree_util.tree_leaves_with_path(parallel.to_host(tree))}

    def max_diff(a, b):
      fa, fb = flat(a), flat(b)
      assert fa.keys() == fb.keys(), (fa.keys(), fb.keys())
      return max(float(np.max(np.abs(fa[k] - fb[k]), initial=0.0)) for k in fa)

    def orth_error(params):
      w = np.asarray(parallel.to_host(params)["rnn"]["cell"]["recurrent_kernel"])
      return float(np.max(np.abs(np.swapaxes(w, -1, -2) @ w - np.eye(w.shape[-1]))))

    def error(fn):
      try:
        fn()
      except ValueError as e:
        return str(e)
      return None

    def emit(result):
      print("RESULT " + json.dumps(result), flush=True)
""")

FOUR = PRELUDE + textwrap.dedent("""
    out = sys.argv[1]
    assert jax.device_count() == 4, jax.devices()
    res = {}

    # One device, the global batch: the reference.
    ref_step = jax.jit(step_fn)
    ref, ref_losses = init_state(), []
    for s in range(STEPS):
      ref, m = ref_step(ref, batch(s))
      ref_losses.append(float(m["loss"]))
    ref_next, _ = ref_step(ref, batch(STEPS))  # one more step, for the resumed runs

    # Data parallel: batch over 4 devices, state replicated.
    mesh = parallel.make_mesh()
    res["mesh"] = parallel.describe(mesh)
    dp_step = parallel.sharded_step(step_fn, mesh, parallel.replicated_sharding(mesh),
                                    parallel.batch_sharding(mesh))
    dp, dp_losses = parallel.replicate(mesh, init_state()), []
    for s in range(STEPS):
      b = parallel.shard_batch(mesh, batch(s))
      dp, m = dp_step(dp, b)
      dp_losses.append(float(m["loss"]))
    w = dp.params["rnn"]["cell"]["recurrent_kernel"]
    res["data_parallel"] = {
        "max_diff": max_diff(dp, ref), "losses": dp_losses, "ref_losses": ref_losses,
        "step": int(dp.step), "orth_error": orth_error(dp.params),
        "batch_shard_rows": sorted({sh.data.shape[0] for sh in b[0].addressable_shards}),
        "w_replicated": bool(w.sharding.is_fully_replicated), "w_devices": len(w.sharding.device_set),
    }

    # Realization sweep: 4 realizations, each its own data, vmapped; step unbatched.
    axes = training.TrainState(None, 0, 0)
    vstep = parallel.realization_step(step_fn, axes)
    unsharded, jvstep = init_sweep(), jax.jit(vstep)
    for s in range(STEPS):
      unsharded, _ = jvstep(unsharded, batch(s, (R,)))
    res["sweep"] = {}
    for n in (4,):
      rmesh = parallel.make_mesh(data=1, realizations=n, devices=jax.devices()[:n])
      f = parallel.sharded_step(vstep, rmesh, parallel.realization_shardings(rmesh, init_sweep(), axes),
                                parallel.batch_sharding(rmesh, 1, realization_axis=0))
      sw = parallel.shard_realizations(rmesh, init_sweep(), axes)
      for s in range(STEPS):
        sw, m = f(sw, parallel.shard_batch(rmesh, batch(s, (R,)), 1, realization_axis=0))
      w = sw.params["rnn"]["cell"]["recurrent_kernel"]
      res["sweep"][str(n)] = {
          "max_diff": max_diff(sw, unsharded), "step": int(sw.step), "loss_shape": list(m["loss"].shape),
          "w_shard_shape": list(w.addressable_shards[0].data.shape), "orth_error": orth_error(sw.params),
          "step_replicated": bool(sw.step.sharding.is_fully_replicated),
      }
      sweep4 = sw

    # Errors.
    mesh2r = parallel.make_mesh(data=1, realizations=2, devices=jax.devices()[:2])
    res["errors"] = {
        "batch6": error(lambda: parallel.shard_batch(mesh, np.zeros((6, T, M)))),
        "realizations3": error(lambda: parallel.shard_realizations(mesh2r, {"w": np.zeros((3, 4, 4))})),
        "devices8": error(lambda: parallel.make_mesh(data=8)),
        "mismatch": error(lambda: parallel.make_mesh(data=3)),
        "realizations3_mesh": error(lambda: parallel.make_mesh(realizations=3)),
        "flag": error(lambda: parallel.check_divides("batch_size", 6, mesh)),
        "local": error(lambda: parallel.shard_local_batch(mesh, np.zeros((6, 2)))),
    }

    # Checkpoints of the 4-device states.
    ok_dp = training.Checkpoints(os.path.join(out, "ckpt_dp")).save(STEPS, dp, meta={"devices": 4})
    ok_sw = training.Checkpoints(os.path.join(out, "ckpt_sweep")).save(STEPS, sweep4, meta={"devices": 4})
    res["saved"] = [bool(ok_dp), bool(ok_sw)]
    np.savez(os.path.join(out, "four.npz"), **{"ref/" + k: v for k, v in flat(ref).items()},
             **{"ref_next/" + k: v for k, v in flat(ref_next).items()},
             **{"dp/" + k: v for k, v in flat(dp).items()},
             **{"sweep/" + k: v for k, v in flat(sweep4).items()})
    emit(res)
""")

MULTIPROCESS = PRELUDE + textwrap.dedent("""
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    assert parallel.initialize_distributed(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = parallel.make_mesh()
    rows = parallel.local_batch_slice(mesh, BATCH)
    step = parallel.sharded_step(step_fn, mesh, parallel.replicated_sharding(mesh),
                                 parallel.batch_sharding(mesh))
    state, losses = parallel.replicate(mesh, init_state()), []
    for s in range(STEPS):
      local = jax.tree.map(lambda a: a[rows], batch(s))  # only this process's half
      state, m = step(state, parallel.shard_local_batch(mesh, local))
      losses.append(float(m["loss"]))
    saved = training.Checkpoints(os.path.join(out, "ckpt_mp")).save(STEPS, state, meta={"processes": 2})
    # A realization-sharded array spread over both processes, gathered on the host.
    rmesh = parallel.make_mesh(data=1, realizations=4)
    spread = parallel.shard_realizations(rmesh, {"w": np.arange(8.0).reshape(4, 2)})
    gathered = parallel.to_host(spread)["w"]
    # The binaries' --devices over both processes: the same number from each, in process order.
    meshes = {f"{count},{devices}": [[d.process_index for d in m.devices.flat], dict(m.shape)]
              for count, devices in ((8, 0), (6, 0), (8, 2)) for m in [parallel.local_mesh(count, devices)]}
    meshes["realizations"] = dict(parallel.local_mesh(4, 0, axis=parallel.REALIZATIONS, name="r").shape)
    mesh_errors = {"odd": error(lambda: parallel.local_mesh(8, 3)), "many": error(lambda: parallel.local_mesh(8, 6)),
                   "count": error(lambda: parallel.local_mesh(7, 0))}
    parallel.barrier("done")
    np.savez(os.path.join(out, f"mp{pid}.npz"), **flat(state))
    emit({"pid": pid, "primary": parallel.is_primary(), "rows": [rows.start, rows.stop],
          "losses": losses, "saved": bool(saved), "step": int(state.step),
          "local_shards": len(spread["w"].addressable_shards),
          "gathered_ok": bool(np.array_equal(gathered, np.arange(8.0).reshape(4, 2))),
          "meshes": meshes, "mesh_errors": mesh_errors,
          "primary_ok": [parallel.primary_ok(pid == 0), parallel.primary_ok(pid == 1)]})
""")

RESTORE = PRELUDE + textwrap.dedent("""
    out = sys.argv[1]
    assert jax.device_count() == 2 and jax.process_count() == 1

    def restore_checkpoint(directory, target):  # the plain Checkpoints restore, onto the target's mesh
      with training.Checkpoints(directory) as ckpt:
        return ckpt.restore_with_meta(target)
    four = dict(np.load(os.path.join(out, "four.npz")))
    res = {}

    def compare(tree, prefix):
      f = flat(tree)
      return max(float(np.max(np.abs(f[k] - four[prefix + k]), initial=0.0)) for k in f)

    mesh = parallel.make_mesh()  # 2 devices, data parallel
    target = parallel.replicate(mesh, init_state(seed=123))  # other values, the new sharding
    for name in ("dp", "mp"):
      restored, meta = restore_checkpoint(os.path.join(out, "ckpt_" + name), target)
      w = restored.params["rnn"]["cell"]["recurrent_kernel"]
      # Resume: one more step on 2 devices == the one-device run's next step.
      step = parallel.sharded_step(step_fn, mesh, parallel.replicated_sharding(mesh),
                                   parallel.batch_sharding(mesh), donate=False)
      nxt, _ = step(restored, parallel.shard_batch(mesh, batch(STEPS)))
      res[name] = {"vs_saved": compare(restored, "dp/"), "vs_ref": compare(restored, "ref/"),
                   "next_vs_ref": compare(nxt, "ref_next/"), "meta": meta, "step": int(restored.step),
                   "devices": len(w.sharding.device_set),
                   "replicated": bool(w.sharding.is_fully_replicated)}

    axes = training.TrainState(None, 0, 0)
    rmesh = parallel.make_mesh(data=1, realizations=2)
    restored, meta = restore_checkpoint(os.path.join(out, "ckpt_sweep"),
                                        parallel.shard_realizations(rmesh, init_sweep(), axes))
    w = restored.params["rnn"]["cell"]["recurrent_kernel"]
    res["sweep"] = {"vs_saved": compare(restored, "sweep/"), "meta": meta,
                    "w_shard_shape": list(w.addressable_shards[0].data.shape)}
    # Abstract targets (no values at all) work too.
    abstract = parallel.abstract_like(init_state(), parallel.replicated_sharding(mesh))
    restored, _ = restore_checkpoint(os.path.join(out, "ckpt_dp"), abstract)
    res["abstract_vs_saved"] = compare(restored, "dp/")
    res["missing"] = restore_checkpoint(os.path.join(out, "nothing_here"), target)
    emit(res)
""")


def _env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env.update(XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
             JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p]))
  return env


def _result(stdout: str, stderr: str, returncode: int) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  assert returncode == 0 and lines, f"rc={returncode}\n{stdout[-3000:]}\n{stderr[-5000:]}"
  return json.loads(lines[-1][len("RESULT "):])


def _script(directory, name: str, code: str) -> str:
  path = os.path.join(directory, name)
  with open(path, "w") as f:
    f.write(code)
  return path


def _run(directory, name: str, code: str, devices: int, *args) -> dict:
  proc = subprocess.run([sys.executable, _script(directory, name, code), *map(str, args)], cwd=REPO,
                        env=_env(devices), capture_output=True, text=True, timeout=TIMEOUT_S)
  return _result(proc.stdout, proc.stderr, proc.returncode)


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(directory, name: str, code: str, devices: int, num: int, *args) -> list[dict]:
  """``num`` processes of ``code`` (argv: process id, a free port, ``args``), bounded by the timeout.

  Loopback only; a second try with another port if the first one was taken
  in the meantime.
  """
  path = _script(directory, name, code)
  for attempt in range(2):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, path, str(i), str(port), *map(str, args)], cwd=REPO,
                              env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(num)]
    outputs = []
    try:
      for p in procs:
        outputs.append(p.communicate(timeout=TIMEOUT_S))
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.communicate()
    taken = any(p.returncode and "address already in use" in e.lower()
                for p, (_, e) in zip(procs, outputs))
    if not (taken and attempt == 0):
      break
  return [_result(o, e, p.returncode) for p, (o, e) in zip(procs, outputs)]


# ----------------------------------------------------------------------------
# Fixtures: each subprocess runs once per module.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("parallel"))


@pytest.fixture(scope="module")
def four(workdir):
  return _run(workdir, "four.py", FOUR, 4, workdir)


@pytest.fixture(scope="module")
def multiprocess(workdir, four):
  del four  # runs first: its npz holds the one-device reference
  return _run_processes(workdir, "multiprocess.py", MULTIPROCESS, 2, 2, workdir)


@pytest.fixture(scope="module")
def restored(workdir, four, multiprocess):
  del four, multiprocess  # their checkpoints
  return _run(workdir, "restore.py", RESTORE, 2, workdir)


TOL = 1e-12  # float64; only the all-reduce's summation order differs


def test_data_parallel_step_equals_one_device(four):
  dp = four["data_parallel"]
  assert four["mesh"]["axes"] == {"data": 4, "realizations": 1}
  assert dp["step"] == 3
  assert dp["batch_shard_rows"] == [2]  # 8 rows over 4 devices
  assert dp["w_replicated"] and dp["w_devices"] == 4
  assert dp["max_diff"] < TOL
  np.testing.assert_allclose(dp["losses"], dp["ref_losses"], rtol=1e-13)
  assert dp["losses"][-1] < dp["losses"][0]  # it trains
  assert dp["orth_error"] < 1e-12  # the projection ran on every replica


def test_realization_sharded_sweep_equals_unsharded(four):
  sw = four["sweep"]["4"]  # 4 realizations over 4 devices
  assert sw["max_diff"] < TOL
  assert sw["step"] == 3 and sw["step_replicated"]
  assert sw["loss_shape"] == [4]
  assert sw["w_shard_shape"] == [1, 8, 8]  # each device holds its realization
  assert sw["orth_error"] < 1e-12


def test_errors_name_the_parameter(four):
  e = four["errors"]
  assert "batch's batch size is 6" in e["batch6"] and "'data' axis size 4" in e["batch6"]
  assert "tree's number of realizations is 3" in e["realizations3"]
  assert "'realizations' axis size 2" in e["realizations3"]
  assert "data=8" in e["devices8"] and "only 4 exist" in e["devices8"]
  assert "data=3" in e["mismatch"] and "does not match" in e["mismatch"]
  assert "realizations=3" in e["realizations3_mesh"] and "divisor of 4" in e["realizations3_mesh"]
  assert e["flag"].startswith("batch_size=6") and "multiple of 4" in e["flag"]
  assert "local batch size 6" in e["local"]


def test_multiprocess_data_parallel_equals_one_process(workdir, multiprocess):
  p0, p1 = multiprocess
  assert (p0["pid"], p1["pid"]) == (0, 1)
  assert p0["primary"] and not p1["primary"]
  assert p0["rows"] == [0, 4] and p1["rows"] == [4, 8]  # each fed only its half
  assert p0["saved"] and p1["saved"] and p0["step"] == p1["step"] == 3
  assert p0["local_shards"] == p1["local_shards"] == 2 and p0["gathered_ok"] and p1["gathered_ok"]
  np.testing.assert_allclose(p0["losses"], p1["losses"], rtol=0, atol=0)
  # --devices counts every process's devices; each process gives the same number, in order.
  assert p0["meshes"] == p1["meshes"] == {
      "8,0": [[0, 0, 1, 1], {"data": 4, "realizations": 1}], "6,0": [[0, 1], {"data": 2, "realizations": 1}],
      "8,2": [[0, 1], {"data": 2, "realizations": 1}], "realizations": {"data": 1, "realizations": 4}}
  assert p0["primary_ok"] == p1["primary_ok"] == [True, False]  # process 0's value, everywhere
  e = p0["mesh_errors"]
  assert e["odd"].startswith("devices=3 is not a multiple of the 2 processes")
  assert e["many"].startswith("devices=6 asks for 3 per process; only 2 local devices")
  assert e["count"].startswith("batch_size=7 is not a multiple of the 2 processes")
  a, b = (dict(np.load(os.path.join(workdir, f"mp{i}.npz"))) for i in (0, 1))
  ref = {k[len("ref/"):]: v for k, v in np.load(os.path.join(workdir, "four.npz")).items()
         if k.startswith("ref/")}
  assert a.keys() == b.keys() == ref.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # the same on both processes
    np.testing.assert_allclose(a[k], ref[k], rtol=0, atol=TOL, err_msg=k)  # == one process


def test_checkpoint_resumes_on_another_device_count(restored):
  dp = restored["dp"]
  assert dp["vs_saved"] == 0.0  # the 4-device state, restored on 2 devices
  assert dp["meta"] == {"devices": 4} and dp["step"] == 3
  assert dp["devices"] == 2 and dp["replicated"]
  assert dp["next_vs_ref"] < TOL  # and training continues as the one-device run
  assert restored["sweep"]["vs_saved"] == 0.0 and restored["sweep"]["meta"] == {"devices": 4}
  assert restored["sweep"]["w_shard_shape"] == [2, 8, 8]  # 4 realizations over 2 devices now
  assert restored["abstract_vs_saved"] == 0.0
  assert restored["missing"] is None


def test_multiprocess_checkpoint_resumes_in_one_process(restored):
  mp = restored["mp"]
  assert mp["meta"] == {"processes": 2} and mp["step"] == 3
  assert mp["vs_ref"] < TOL and mp["vs_saved"] < TOL
  assert mp["next_vs_ref"] < TOL
  assert mp["devices"] == 2


# ----------------------------------------------------------------------------
# A real binary (train.memory_tasks) on two processes vs one.

# Runs a binary's main (argv: process id, port (0: one process), the binary, its flags), recording
# every file it writes (os.replace: the atomic writers and figures; open for writing) and what it
# prints.
BINARY = textwrap.dedent("""
    import builtins, contextlib, io, json, os, runpy, sys
    pid, port, module, *flags = sys.argv[1:]
    written, real_replace, real_open = [], os.replace, builtins.open

    def replace(src, dst, *args, **kwargs):
      written.append(os.path.abspath(dst))
      return real_replace(src, dst, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
      if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        written.append(os.path.abspath(file))
      return real_open(file, mode, *args, **kwargs)

    os.replace, builtins.open = replace, open_
    if port != "0":
      flags += ["--num_processes=2", f"--process_id={pid}", f"--coordinator_address=127.0.0.1:{port}"]
    sys.argv = [module, *flags]
    out, code = io.StringIO(), None
    try:
      with contextlib.redirect_stdout(out):
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
    print("RESULT " + json.dumps({"pid": int(pid), "exit": code, "written": written, "stdout": out.getvalue()}))
""")

# Tiny, cheap settings: 4 steps, checkpoints at 2 and 4 (both kept), one model.
MEMORY_FLAGS = ("--task=first_term", "--length=5", "--models=urnn_expm", "--hidden=8", "--batch_size=8",
                "--steps=4", "--eval_every=2", "--eval_size=16", "--eval_batch=8", "--checkpoint_every=2",
                "--diagnostics_batch=4")
RUN = os.path.join("first_term_L5", "urnn_expm")


def _memory_tasks(directory, workdir, processes: int) -> list[dict]:
  args = ("train.memory_tasks", *MEMORY_FLAGS, f"--workdir={workdir}")
  if processes == 1:
    return [_run(directory, "binary.py", BINARY, 1, 0, 0, *args)]
  return _run_processes(directory, "binary.py", BINARY, 1, processes, *args)


@pytest.fixture(scope="module")
def binary_runs(tmp_path_factory):
  """One process, two processes (one device each), and the two-process run resumed in one process."""
  import shutil

  d = tmp_path_factory.mktemp("binary")
  one = _memory_tasks(d, d / "one", 1)
  two = _memory_tasks(d, d / "two", 2)
  # A run killed after its step-2 checkpoint: the two-process run with its step-4 checkpoint gone.
  shutil.copytree(d / "two", d / "resumed")
  shutil.rmtree(d / "resumed" / RUN / "checkpoints" / "4")
  resumed = _memory_tasks(d, d / "resumed", 1)
  return d, one, two, resumed


def _restore(step_dir, like=None):
  import jax
  import orbax.checkpoint as ocp

  if like is not None:  # onto this process's device, whatever it was saved from
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
  with ocp.StandardCheckpointer() as c:
    return c.restore(os.path.join(step_dir, "state"), like)


def _max_diff(a, b) -> float:
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))


def _history(workdir):
  return json.loads((workdir / RUN / "history.json").read_text())["history"]


def _values(entries):
  keys = ("step", "train_loss", "train_grad_norm", "train_accuracy", "eval_loss", "eval_accuracy")
  return [[e.get(k) for k in keys] for e in entries]


def test_two_process_binary_equals_one_process(binary_runs):
  d, (one,), (p0, p1), _ = binary_runs
  assert one["exit"] is None and p0["exit"] is None and p1["exit"] is None  # absl: sys.exit(None), success
  # Equal results: the same evaluations (float32; only the gradient all-reduce's order differs) and
  # parameters at both checkpoints.
  np.testing.assert_allclose(np.array(_values(_history(d / "two")), float),
                             np.array(_values(_history(d / "one")), float), rtol=1e-5, atol=0)
  for step in ("2", "4"):
    ref = _restore(d / "one" / RUN / "checkpoints" / step)
    assert _max_diff(_restore(d / "two" / RUN / "checkpoints" / step, ref), ref) < 1e-6, step
  res_one, res_two = (json.loads((d / w / "first_term_L5" / "results.json").read_text())["results"][0]
                      for w in ("one", "two"))
  assert res_two["steps"] == res_one["steps"] == 4
  np.testing.assert_allclose(res_two["eval_loss"], res_one["eval_loss"], rtol=1e-5)
  assert res_two["eval_accuracy"] == res_one["eval_accuracy"]
  # Only process 0 wrote files (outside the checkpoints, which both write through orbax) and printed.
  outside = lambda p: [f for f in p["written"] if str(d) in f and os.sep + "checkpoints" + os.sep not in f]
  assert outside(p1) == [] and p1["stdout"] == ""
  names = {os.path.relpath(f, d / "two") for f in outside(p0)}
  assert {"summary.md", os.path.join("first_term_L5", "config.json"), os.path.join("first_term_L5", "results.json"),
          os.path.join("first_term_L5", "learning_curves.png"), os.path.join(RUN, "history.json")} <= names
  assert "memoryless baseline" in p0["stdout"] and "'num_processes': 2" in p0["stdout"]


def test_two_process_checkpoint_resumes_in_one_process(binary_runs):
  d, (one,), _, (resumed,) = binary_runs
  assert resumed["exit"] is None and "resumed from step 2" in resumed["stdout"]
  # It continued from the two-process step-2 checkpoint to the one-process run's end.
  np.testing.assert_allclose(np.array(_values(_history(d / "resumed")), float),
                             np.array(_values(_history(d / "one")), float), rtol=1e-5, atol=0)
  ref = _restore(d / "one" / RUN / "checkpoints" / "4")
  assert _max_diff(_restore(d / "resumed" / RUN / "checkpoints" / "4", ref), ref) < 1e-6


def test_binary_refuses_bad_multiprocess_flags():
  proc = subprocess.run([sys.executable, "-m", "train.memory_tasks", "--num_processes=2", "--steps=1"],
                        cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "--num_processes=2 needs --coordinator_address (host:port of process 0)." in proc.stderr


# The language model's --devices: its B contiguous streams (and their carried state) over the data axis.
LANGUAGE_MODEL = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    import jax
    from test_language_model import tiny_config, write_tiny_ptb
    from urnn_jax.data import text
    from urnn_jax.experiments import language_model as lm

    out = sys.argv[1]
    data_dir = write_tiny_ptb(os.path.join(out, "ptb"))
    corpus, res = text.load_ptb(data_dir), {}
    for devices in (1, 2):
      config = tiny_config(data_dir, batch_size=4, devices=devices, diagnostics=False)
      r = lm.train_and_evaluate(config, os.path.join(out, f"d{devices}"), corpus, log=lambda *_: None,
                                progress_stream=open(os.devnull, "w"))
      res[devices] = {"mesh": dict(config.mesh().shape), "samples": r["samples"], "test_loss": r["test_loss"],
                      "losses": [[h["train_loss"], h["val_loss"]] for h in r["history"]]}
    print("RESULT " + json.dumps(res), flush=True)
""")


def test_language_model_streams_sharded_equal_one_device(tmp_path):
  res = _run(tmp_path, "lm.py", LANGUAGE_MODEL, 2, tmp_path)
  one, two = res["1"], res["2"]
  assert one["mesh"] == {"data": 1, "realizations": 1} and two["mesh"] == {"data": 2, "realizations": 1}
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)  # float32, the all-reduce's order
  np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=1e-5)
  assert two["samples"] == one["samples"]


# ----------------------------------------------------------------------------
# In-process (one device): the pieces that need no second device.


def test_one_device_mesh_and_helpers():
  import jax
  import jax.numpy as jnp
  from urnn_jax import parallel

  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "realizations": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert parallel.local_batch_slice(mesh, 6) == slice(0, 6)
  assert parallel.is_primary()
  assert parallel.initialize_distributed(None, 1, 0) is False  # one process: a no-op
  assert parallel.initialize_distributed() is False
  assert parallel.primary_ok(True) is True and parallel.primary_ok(False) is False  # one process: as given
  with pytest.raises(ValueError, match="coordinator_address"):
    parallel.initialize_distributed(None, 2, 0)
  with pytest.raises(ValueError, match=r"process_id=2; expected an int in \[0, 2\)"):
    parallel.initialize_distributed("127.0.0.1:1", 2, 2)
  with pytest.raises(ValueError, match="realizations=0"):
    parallel.make_mesh(realizations=0)
  tree = {"a": jnp.ones((2, 3)), "s": jnp.zeros((), jnp.int32)}
  abstract = parallel.abstract_like(tree)
  assert abstract["a"].shape == (2, 3) and abstract["s"].dtype == jnp.int32
  assert abstract["a"].sharding == tree["a"].sharding
  placed = parallel.shard_batch(mesh, tree["a"])
  np.testing.assert_array_equal(parallel.to_host(placed), np.ones((2, 3)))
  assert parallel.describe(mesh)["num_devices"] == 1


# ----------------------------------------------------------------------------
# The benchmark binary.


def test_device_scaling_quick(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.device_scaling", "--quick", "--device_counts=1,2",
       "--seq_len=10", "--steps=1", "--repeats=1", f"--workdir={tmp_path}"],
      cwd=REPO, env=_env(1), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  payload = json.loads((tmp_path / "device_scaling.json").read_text())
  md = (tmp_path / "device_scaling.md").read_text()
  rows = payload["rows"]
  assert {(r["mode"], r["devices"]) for r in rows} == {
      (m, d) for m in ("data_parallel", "realization_sweep") for d in (1, 2)}
  for r in rows:
    assert r["steps_per_s"] > 0 and r["ms_per_step"] > 0 and r["speedup"] > 0
  assert "# Device scaling" in md and "| data_parallel |" in md and "share the machine's" in md
