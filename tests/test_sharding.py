"""The trainer computes the same thing on one device, data-parallel over 8 and FSDP 2x4.

Uses the 8 fake CPU devices of tests/conftest.py: a tiny config (32x32, a 2-level width-8 U-Net, a
one-level weight-free flow) and one fixed global batch per step. GroupNorm keeps each example's
function independent of how the batch is split, so only the order of float reductions differs.

Two choices keep the comparison meaningful and the test fast:
  * The equality runs use SGD with momentum, not Adam: Adam's first update is ~lr * sign(grad), so
    coordinates whose true gradient is zero (a conv bias in front of GroupNorm) move by +-lr on the
    sign of rounding noise, which differs between layouts. Adam's moments are checked for their
    FSDP layout separately.
  * The output head is sigmoid, not the zero-initialised residual: at the exact identity the colour
    term is L1 at 0, whose gradient is decided by rounding noise.
  * The steps are compiled with xla_backend_optimization_level=0 (10x faster XLA:CPU compiles; same
    math), through the Trainer's own jitted functions (their shardings and donation).
"""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from data_pipelines import procedural
from magplus_jax import config_lib, sharding, train

FSDP_MESH = (("data", 2), ("fsdp", 4), ("model", 1))
FSDP_RULES = ((".*kernel", "fsdp"), (".*", "replicate"))
DP_MESH = (("data", -1), ("fsdp", 1), ("model", 1))
STEPS = 2
FAST = {"xla_backend_optimization_level": 0}
# Tolerances from what float32 promises, not from one CPU: a layout changes only the order of the
# float reductions (XLA:CPU also picks other kernels, and so other orders, on AVX-512/AMX than on
# AVX2), and reordering a sum of n float32 terms moves it by about sqrt(n) * eps * sum|terms|
# (eps = 6e-8; n = 8 * 32 * 32 = 8192 pixels per batch, so ~5e-6 of sum|terms| per reduction).
# * Losses are means of positive terms (no cancellation): a few chained reductions give ~2e-5
#   relative at most; 5e-5 leaves 2x (session 2 measured 2e-7 on AVX2).
# * Parameters: after 2 steps, param - init is lr x a sum of gradients, and a gradient entry is a
#   sum over pixels whose terms cancel (sum|terms| / |sum| ~ sqrt(n) ~ 90 for near-zero-mean terms),
#   so its float32 error is ~90 * 5e-6 ~ 5e-4 of its own scale; the forward's rounding feeds in
#   too, and L1 terms near zero flip their sign. Each tensor's update must agree to 1 % of that
#   tensor's largest update (20x over 5e-4; on an AVX-512/AMX Xeon 12 of 2736 entries differed by
#   6e-4 of the largest update), plus 0.1 % of the largest update of all for tensors whose true
#   gradient is ~0 (biases in front of GroupNorm move by rounding noise only). A real layout bug
#   (a missing all-reduce or mean over shards) moves updates by ~100 %.
LOSS_RTOL = 5e-5
UPDATE_RTOL = 1e-2
UPDATE_FLOOR = 1e-3


def tiny_config(mesh=DP_MESH, rules=((".*", "replicate"),), optimizer="sgd"):
  c = config_lib.base_config()
  c.data.image_size = 32
  c.data.supersample = 2
  c.data.sources = "textures"
  c.model.levels = 2
  c.model.width = 8
  c.model.output = "sigmoid"
  c.batch_size = 8
  c.flow.name = "pyramid_lk"
  c.flow.iters = 0  # one level, one Gauss-Newton step: cheap to compile
  c.flow.levels = 1
  c.flow.iters_finest = 1
  c.total_steps = 10
  c.optimizer.name = optimizer
  c.optimizer.schedule = "constant"
  c.optimizer.learning_rate = 1e-2
  c.mesh = mesh
  c.sharding_rules = rules
  return c


def fast(jitted, *args):
  """Runs a Trainer's jitted function, compiled with FAST options."""
  return jitted.lower(*args).compile(compiler_options=FAST)(*args)


@pytest.fixture(scope="module")
def batches():
  spec = procedural.ProceduralSpec(image_size=32, supersample=2, sources="textures")
  out = []
  for s in range(STEPS):
    ex = [procedural.generate_example(spec, "train", 0, s * 8 + i) for i in range(8)]
    out.append({k: np.stack([e[k] for e in ex]) for k in ex[0]})
  return out


def _run(config, devices, batches):
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  trainer = train.build_trainer(config, mesh)
  state = fast(trainer.init)
  init_params = jax.device_get(state["params"])
  losses, first_batch = [], None
  step = None
  for b in batches:
    gb = sharding.global_batch(b, mesh)
    first_batch = first_batch or gb
    args = (state, gb, trainer.flow.params)
    step = step or trainer.train_step.lower(*args).compile(compiler_options=FAST)
    state, terms = step(*args)
    losses.append(float(terms["loss"]))
  return {"mesh": mesh, "trainer": trainer, "state": state, "losses": losses,
          "batch": first_batch, "init_params": init_params}


@pytest.fixture(scope="module")
def runs(batches):
  devs = jax.devices()
  assert len(devs) == 8, "tests/conftest.py should give 8 fake CPU devices"
  return {
      "single": _run(tiny_config(), devs[:1], batches),
      "dp": _run(tiny_config(), devs, batches),
      "fsdp": _run(tiny_config(FSDP_MESH, FSDP_RULES), devs, batches),
  }


def _flat(tree):
  return {sharding._path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_losses_and_params_agree(runs):
  ref_losses = runs["single"]["losses"]
  ref_params = _flat(jax.device_get(runs["single"]["state"]["params"]))
  assert all(np.isfinite(ref_losses)) and ref_losses[0] > 0
  # Same seed, same initial parameters; and the steps moved them (a real comparison).
  init = _flat(runs["single"]["init_params"])
  for name in ("dp", "fsdp"):
    for k, v in _flat(runs[name]["init_params"]).items():
      np.testing.assert_array_equal(v, init[k])
  ref_update = {k: ref_params[k] - init[k] for k in init}
  moved = max(float(np.max(np.abs(u))) for u in ref_update.values())
  assert moved > 1e-4
  for name in ("dp", "fsdp"):
    np.testing.assert_allclose(runs[name]["losses"], ref_losses, rtol=LOSS_RTOL, err_msg=name)
    params = _flat(jax.device_get(runs[name]["state"]["params"]))
    assert params.keys() == ref_params.keys()
    for k, v in params.items():
      atol = UPDATE_RTOL * float(np.max(np.abs(ref_update[k]))) + UPDATE_FLOOR * moved
      np.testing.assert_allclose(v - init[k], ref_update[k], rtol=0, atol=atol,
                                 err_msg=f"{name} {k}")


def test_data_parallel_layout(runs):
  r = runs["dp"]
  assert dict(r["mesh"].shape) == {"data": 8, "fsdp": 1, "model": 1}
  for leaf in jax.tree.leaves(r["state"]):
    assert leaf.sharding.is_fully_replicated
  ref = r["batch"]["ref"]
  assert ref.sharding.spec == P(("data", "fsdp"))
  assert len(ref.addressable_shards) == 8
  assert {s.data.shape for s in ref.addressable_shards} == {(1, 32, 32, 3)}


def _check_fsdp_layout(state, opt_keys):
  """Every kernel sharded over fsdp (shard shape = shape / 4 on one dim), the rest replicated, and
  the optimizer's per-parameter trees (opt_keys, e.g. Adam's mu/nu) laid out like their params."""
  params = _flat(state["params"])
  kernels = {k: v for k, v in params.items() if k.endswith("kernel")}
  # Every kernel here has a dimension divisible by 4 (the widths 8 and 16).
  assert kernels and all("fsdp" in v.sharding.spec for v in kernels.values())
  for k, v in kernels.items():
    d = list(v.sharding.spec).index("fsdp")
    expect = v.shape[:d] + (v.shape[d] // 4,) + v.shape[d + 1:]
    assert {s.data.shape for s in v.addressable_shards} == {expect}, k
  others = [v for k, v in params.items() if not k.endswith("kernel")]
  assert others and all(v.sharding.is_fully_replicated for v in others)
  opt = _flat(state["opt_state"])
  for key in opt_keys:
    hits = {k: v for k, v in opt.items() if f"/{key}/" in k and k.endswith("kernel")}
    assert len(hits) == len(kernels), (key, sorted(opt))
    for k, v in hits.items():
      pk = k.split(f"/{key}/", 1)[1]
      assert v.sharding.spec == kernels[pk].sharding.spec, k
      assert ({s.data.shape for s in v.addressable_shards}
              == {s.data.shape for s in kernels[pk].addressable_shards}), k
  return kernels


def test_fsdp_layout_after_steps(runs):
  r = runs["fsdp"]
  assert dict(r["mesh"].shape) == {"data": 2, "fsdp": 4, "model": 1}
  kernels = _check_fsdp_layout(r["state"], opt_keys=("trace",))  # SGD momentum
  abstract = _flat(r["trainer"].abstract_state["params"])
  for k, v in kernels.items():
    assert abstract[k].sharding.spec == v.sharding.spec
  ref = r["batch"]["ref"]
  assert ref.sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in ref.addressable_shards} == {(1, 32, 32, 3)}


def test_fsdp_shards_adam_moments():
  config = tiny_config(FSDP_MESH, FSDP_RULES, optimizer="adam")
  mesh = sharding.make_mesh(config.mesh)
  trainer = train.build_trainer(config, mesh)
  state = fast(trainer.init)
  _check_fsdp_layout(state, opt_keys=("mu", "nu"))
  for path, leaf in _flat(trainer.abstract_state).items():
    assert leaf.sharding == _flat(trainer.state_shardings)[path]


# ------------------------------------------------------------------------------- unit: spec_for


@pytest.fixture(scope="module")
def mesh_2x4():
  return sharding.make_mesh(FSDP_MESH)


def test_spec_for_rules(mesh_2x4):
  rules = ((".*head/kernel", "replicate"), (".*kernel", "fsdp"), (".*", "replicate"))
  assert sharding.spec_for("head/kernel", (1, 1, 8, 3), rules, mesh_2x4) == P()
  # fsdp takes the largest dimension divisible by the axis size (38 is not, 8 is).
  spec = lambda name, shape, r=rules: sharding.spec_for(name, shape, r, mesh_2x4)
  assert spec("a/kernel", (3, 3, 38, 8)) == P(None, None, None, "fsdp")
  assert spec("a/kernel", (3, 3, 16, 8)) == P(None, None, "fsdp", None)
  assert sharding.spec_for("a/kernel", (3, 3, 5, 3), rules, mesh_2x4) == P()  # none divides
  assert sharding.spec_for("a/bias", (8,), rules, mesh_2x4) == P()
  assert sharding.spec_for("step", (), rules, mesh_2x4) == P()
  explicit = ((".*kernel", (None, None, None, "fsdp")),)
  assert spec("k/kernel", (3, 3, 4, 8), explicit) == P(None, None, None, "fsdp")
  # No rule matches: replicated.
  assert sharding.spec_for("x/scale", (8,), explicit, mesh_2x4) == P()
  # fsdp on a mesh without fsdp parallelism: replicated.
  dp = sharding.make_mesh(DP_MESH)
  assert sharding.spec_for("a/kernel", (3, 3, 16, 8), rules, dp) == P()


def test_spec_for_errors(mesh_2x4):
  with pytest.raises(ValueError, match="has 2 dims.*shape"):
    sharding.spec_for("a/kernel", (3, 3, 4, 8), ((".*", (None, "fsdp")),), mesh_2x4)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.spec_for("a/kernel", (3, 3, 4, 6), ((".*", (None, None, None, "fsdp")),), mesh_2x4)


def test_make_mesh(mesh_2x4):
  assert dict(mesh_2x4.shape) == {"data": 2, "fsdp": 4, "model": 1}
  m = sharding.make_mesh((("data", -1), ("fsdp", 2)), devices=jax.devices()[:4])
  assert dict(m.shape) == {"data": 2, "fsdp": 2}
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh((("data", -1), ("fsdp", -1)))
  with pytest.raises(ValueError, match="needs 6 devices, 8"):
    sharding.make_mesh((("data", 3), ("fsdp", 2)))
  with pytest.raises(ValueError, match="does not divide 8"):
    sharding.make_mesh((("data", -1), ("fsdp", 3)))


def test_global_batch(mesh_2x4):
  rng = np.random.default_rng(0)
  local = {"ref": rng.random((8, 4, 4, 3), dtype=np.float32),
           "alpha": rng.random(8, dtype=np.float32), "index": np.arange(8, dtype=np.int32)}
  gb = sharding.global_batch(local, mesh_2x4)
  for k, v in gb.items():
    np.testing.assert_array_equal(np.asarray(v), local[k])
    assert v.sharding == sharding.batch_sharding(mesh_2x4)
    assert len({str(s.index) for s in v.addressable_shards}) == 8
    assert {s.data.shape[0] for s in v.addressable_shards} == {1}
  # Back to numpy on this (the only) host, shard by shard.
  np.testing.assert_array_equal(sharding.to_host(gb["ref"]), local["ref"])
  # A mesh without an fsdp axis shards the batch over data alone.
  m = sharding.make_mesh((("data", 4),), devices=jax.devices()[:4])
  assert sharding.batch_sharding(m).spec == P(("data",))
  with pytest.raises(ValueError):
    sharding.global_batch({"ref": np.zeros((6, 2), np.float32)}, mesh_2x4)


def test_multi_process_detection():
  multi = sharding.is_multi_process_job
  assert not multi({})  # a plain single-machine run
  assert not multi({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "localhost"})
  assert multi({"SLURM_NTASKS": "16"})
  assert multi({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
  assert multi({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"})
  assert multi({"MAGPLUS_DISTRIBUTED": "1"})
  assert not multi({"MAGPLUS_DISTRIBUTED": "0", "SLURM_NTASKS": "16"})


def test_logical_activation_axes(mesh_2x4):
  names = ("batch", "height", "width", "channels")
  assert sharding.logical_spec(names, mesh_2x4) == P(("data", "fsdp"), None, None, "model")
  # Axes the mesh lacks are dropped: one rule set serves every mesh.
  data_only = sharding.make_mesh((("data", 8),))
  assert sharding.logical_spec(names, data_only) == P(("data",), None, None, None)
  with pytest.raises(ValueError, match="'depth' has no rule"):
    sharding.logical_spec(("batch", "depth"), mesh_2x4)
  # Inside jit the constraint lays the activation out over the mesh.
  x = np.arange(8 * 2 * 2 * 4, dtype=np.float32).reshape(8, 2, 2, 4)
  y = jax.jit(lambda a: sharding.constrain(a * 2, names, mesh_2x4))(x)
  want = jax.sharding.NamedSharding(mesh_2x4, P(("data", "fsdp"), None, None, "model"))
  assert y.sharding.is_equivalent_to(want, 4)
  assert {s.data.shape for s in y.addressable_shards} == {(1, 2, 2, 4)}
  np.testing.assert_array_equal(np.asarray(y), 2 * x)
