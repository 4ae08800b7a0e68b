"""FOMM port vs the official PyTorch numbers (tests/golden/fomm_*.npz, see shared/golden/README.md).

Weights come from golden_weights.make_state_dict through the real converter
(`ports.fomm.convert_state_dict`). Each fixture's work runs once per process: one jitted keypoint
call on [source, driving frames], and one jitted generator call on every (driving keypoints, case)
pair at once (golden driving keypoints, relative transfer with and without movement-scale
adaptation), so vox256 compiles the generator a single time; the vox256 generator tests (9 frames
at 256x256) are marked slow.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from golden_utils import load_fixture
from magplus_jax.models.backbones import fomm
from magplus_jax.ports import fomm as fomm_port
from magplus_jax.ports.common import CheckpointMismatchError

jax.config.update("jax_default_matmul_precision", "highest")

# README tolerances for a float32 port.
TOL_KP = 1e-5          # keypoints, jacobians, mask, occlusion, deformation, sparse motion
TOL_PRED = 1e-4        # prediction, heatmap_representation
TOL_DEFORMED = 3e-4    # deformed, sparse_deformed

CASES = [pytest.param("fomm_tiny64", id="tiny64"),
         pytest.param("fomm_vox256", id="vox256", marks=pytest.mark.slow)]


def nhwc(a):
  return np.moveaxis(np.asarray(a), -3, -1)


def split_sd(sd):
  gen = {k[len("generator."):]: v for k, v in sd.items() if k.startswith("generator.")}
  kp = {k[len("kp_detector."):]: v for k, v in sd.items() if k.startswith("kp_detector.")}
  return gen, kp


def assert_close(name, got, want, atol):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f"{name}: shape {got.shape} vs golden {want.shape}"
  err = float(np.max(np.abs(got - want)))
  print(f"max abs error {name}: {err:.3g} (atol {atol:g})")
  assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:g}"


@functools.lru_cache(maxsize=None)
def converted(name):
  z, meta, sd = load_fixture(name)
  config = fomm.model_config(meta["config"])
  params = fomm_port.convert_state_dict(*split_sd(sd), config)
  return z, meta, config, params


@functools.lru_cache(maxsize=None)
def model_split(name):
  _, _, config, params = converted(name)
  return nnx.split(fomm.from_state_dict(config, params))


@functools.lru_cache(maxsize=None)
def detect_fixture(name):
  """Keypoints of [source, driving frames] (one jitted call) and both relative transfers."""
  z = converted(name)[0]
  graphdef, state = model_split(name)
  detect = jax.jit(lambda state, x: nnx.merge(graphdef, state).kp_detector(x))
  kp = detect(state, np.concatenate([nhwc(z["source"]), nhwc(z["driving"][:, 0])]))
  kp = {k: np.asarray(kp[k]) for k in ("value", "jacobian", "heatmap", "down")}
  kp_src = {k: kp[k][:1] for k in ("value", "jacobian")}
  kp_drv = {k: kp[k][1:][None] for k in ("value", "jacobian")}  # [1, T, ...]
  kp_ref = {k: kp[k][1:2] for k in ("value", "jacobian")}
  norms = {adapt: jax.tree.map(np.asarray, fomm.normalize_kp(
      kp_src, kp_drv, kp_ref, relative=True, adapt_movement_scale=adapt))
           for adapt in (True, False)}
  return kp, norms


@functools.lru_cache(maxsize=None)
def generate_fixture(name):
  """One jitted generator call on a batch of 3T: the golden driving keypoints (gen/*), then the
  relative transfers with and without movement-scale adaptation."""
  z = converted(name)[0]
  graphdef, state = model_split(name)
  generate = jax.jit(lambda state, s, kd, ks: nnx.merge(graphdef, state).generator(s, kd, ks))
  kp, norms = detect_fixture(name)
  t = z["driving"].shape[0]
  golden_drv = {"value": z["kp_driving/value"][:, 0], "jacobian": z["kp_driving/jacobian"][:, 0]}
  golden_src = {"value": z["kp_source/value"], "jacobian": z["kp_source/jacobian"]}
  keys = ("value", "jacobian")
  kp_drv = {k: np.concatenate([golden_drv[k], norms[True][k][0], norms[False][k][0]]) for k in keys}
  kp_src = {k: np.concatenate([np.repeat(golden_src[k], t, 0), np.repeat(kp[k][:1], 2 * t, 0)])
            for k in keys}
  out = generate(state, np.repeat(nhwc(z["source"]), 3 * t, 0), kp_drv, kp_src)
  out = jax.tree.map(np.asarray, out)
  return {"gen": {k: v[:t] for k, v in out.items()},
          "adapt": out["prediction"][t:2 * t], "noadapt": out["prediction"][2 * t:]}


@pytest.mark.parametrize("name", ["fomm_tiny64", "fomm_vox256"])
def test_keypoints(name):
  z = converted(name)[0]
  kp = detect_fixture(name)[0]
  assert_close("kp_source/value", kp["value"][:1], z["kp_source/value"], TOL_KP)
  assert_close("kp_source/jacobian", kp["jacobian"][:1], z["kp_source/jacobian"], TOL_KP)
  assert_close("kp_driving/value", kp["value"][1:], z["kp_driving/value"][:, 0], TOL_KP)
  assert_close("kp_driving/jacobian", kp["jacobian"][1:], z["kp_driving/jacobian"][:, 0], TOL_KP)
  assert_close("extra/kp_source/down", kp["down"][:1], nhwc(z["extra/kp_source/down"]), TOL_KP)
  assert_close("extra/kp_source/heatmap", kp["heatmap"][:1],
               np.moveaxis(z["extra/kp_source/heatmap"], 1, -1), TOL_KP)


@pytest.mark.parametrize("name", ["fomm_tiny64", "fomm_vox256"])
def test_relative_keypoints(name):
  z = converted(name)[0]
  norms = detect_fixture(name)[1]
  for key, adapt in (("anim_rel_adapt", True), ("anim_rel_noadapt", False)):
    assert_close(f"{key}/kp_norm/value", norms[adapt]["value"][0],
                 z[f"{key}/kp_norm/value"][:, 0], TOL_KP)
    assert_close(f"{key}/kp_norm/jacobian", norms[adapt]["jacobian"][0],
                 z[f"{key}/kp_norm/jacobian"][:, 0], TOL_KP)
  assert_close("anim_rel_adapt/movement_scale", norms[True]["movement_scale"][0],
               z["anim_rel_adapt/movement_scale"], TOL_KP)
  assert float(norms[False]["movement_scale"][0]) == 1.0


@pytest.mark.parametrize("name", CASES)
def test_generator(name):
  z = converted(name)[0]
  gen = generate_fixture(name)["gen"]
  assert_close("gen/mask", gen["mask"], nhwc(z["gen/mask"][:, 0]), TOL_KP)
  assert_close("gen/occlusion_map", gen["occlusion_map"], nhwc(z["gen/occlusion_map"][:, 0]),
               TOL_KP)
  assert_close("gen/deformation", gen["deformation"], z["gen/deformation"][:, 0], TOL_KP)
  assert_close("gen/prediction", gen["prediction"], nhwc(z["gen/prediction"][:, 0]), TOL_PRED)
  assert_close("gen/deformed", gen["deformed"], nhwc(z["gen/deformed"][:, 0]), TOL_DEFORMED)
  assert_close("gen/sparse_deformed", gen["sparse_deformed"],
               nhwc(z["gen/sparse_deformed"][:, 0]), TOL_DEFORMED)
  assert_close("extra/dense_motion/source_down", gen["source_down"][:1],
               nhwc(z["extra/dense_motion/source_down"]), TOL_KP)
  assert_close("extra/dense_motion/heatmap_representation_t0", gen["heatmap_representation"][:1],
               np.moveaxis(z["extra/dense_motion/heatmap_representation_t0"][:, :, 0], 1, -1),
               TOL_PRED)
  assert_close("extra/dense_motion/sparse_motion_t0", gen["sparse_motion"][:1],
               z["extra/dense_motion/sparse_motion_t0"], TOL_KP)


@pytest.mark.parametrize("name", CASES)
def test_relative_motion_transfer_predictions(name):
  z = converted(name)[0]
  res = generate_fixture(name)
  for key in ("anim_rel_adapt", "anim_rel_noadapt"):
    assert_close(f"{key}/prediction", res["adapt" if key.endswith("_adapt") else "noadapt"],
                 nhwc(z[f"{key}/prediction"][:, 0]), TOL_PRED)


def test_batch2_tiny64():
  z = converted("fomm_tiny64")[0]
  graphdef, state = model_split("fomm_tiny64")

  @jax.jit
  def run(state, source, driving):
    m = nnx.merge(graphdef, state)
    kp = m.kp_detector(jnp.concatenate([source, driving]))
    kp = {k: kp[k] for k in ("value", "jacobian")}
    ks = jax.tree.map(lambda a: a[:2], kp)
    kd = jax.tree.map(lambda a: a[2:], kp)
    return ks, kd, m.generator(source, kd, ks)

  ks, kd, gen = run(state, nhwc(z["b2/source"]), nhwc(z["b2/driving"]))
  for part, kp in (("kp_source", ks), ("kp_driving", kd)):
    for k in ("value", "jacobian"):
      assert_close(f"b2/{part}/{k}", kp[k], z[f"b2/{part}/{k}"], TOL_KP)
  for k, tol in (("mask", TOL_KP), ("occlusion_map", TOL_KP), ("prediction", TOL_PRED),
                 ("deformed", TOL_DEFORMED), ("sparse_deformed", TOL_DEFORMED)):
    assert_close(f"b2/gen/{k}", gen[k], nhwc(z[f"b2/gen/{k}"]), tol)
  assert_close("b2/gen/deformation", gen["deformation"], z["b2/gen/deformation"], TOL_KP)


def test_convex_hull_area_matches_scipy():
  spatial = pytest.importorskip("scipy.spatial")
  rng = np.random.default_rng(0)
  pts = rng.uniform(-1, 1, (16, 10, 2)).astype(np.float32)
  pts[1, 3] = pts[1, 7]                                 # a duplicated point
  pts[2, :, 1] = 0.3 * pts[2, :, 0] ** 2                 # all on a parabola (all on the hull)
  pts[3, :4] = [[-1, -1], [1, -1], [1, 1], [-1, 1]]      # a square containing the rest
  pts[3, 4:] *= 0.5
  got = np.asarray(jax.jit(fomm.convex_hull_area)(pts))
  want = np.array([spatial.ConvexHull(p).volume for p in pts])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert abs(got[3] - 4.0) < 1e-5
  # Degenerate reference hull: scale falls back to 1 instead of inf / NaN.
  line = np.stack([np.linspace(-1, 1, 10), np.zeros(10)], -1)[None].astype(np.float32)
  assert float(fomm.convex_hull_area(line)[0]) == 0.0
  assert float(fomm.movement_scale(pts[:1], line)[0]) == 1.0


def test_identity_motion_and_align_corners():
  """Driving == source keypoints make every sparse motion, hence the deformation, the identity
  grid (whatever the weights); only align_corners=True (torch 1.0, under which the official
  weights were trained) reads that grid back as the source image itself."""
  config = fomm.model_config(converted("fomm_tiny64")[1]["config"])
  config = dict(config, generator_params=dict(
      config["generator_params"],
      dense_motion_params=dict(config["generator_params"]["dense_motion_params"], scale_factor=1)))
  src = nhwc(converted("fomm_tiny64")[0]["source"])[:, ::2, ::2]  # 32 x 32
  kp = {"value": jnp.asarray(np.random.default_rng(0).uniform(-0.8, 0.8, (1, 10, 2)), jnp.float32),
        "jacobian": jnp.broadcast_to(jnp.eye(2), (1, 10, 2, 2))}
  deformed = {}
  for ac in (True, False):
    graphdef, state = nnx.split(fomm.FOMM(config, align_corners=ac, rngs=nnx.Rngs(0)))
    gen = jax.jit(lambda state, s, kp: nnx.merge(graphdef, state).generator(s, kp, kp))
    out = gen(state, src, kp)
    grid = fomm.resample.make_coordinate_grid(32, 32)[None]
    assert_close("identity deformation", out["deformation"], grid, 1e-6)
    deformed[ac] = np.asarray(out["deformed"])
  assert_close("deformed (align_corners=True)", deformed[True], src, 1e-5)
  assert np.max(np.abs(deformed[False] - src)) > 1e-2


def _save_official(tmp_path, sd):
  torch = pytest.importorskip("torch")
  gen, kp = split_sd(sd)
  to_t = lambda d: {k: torch.from_numpy(np.array(v)) for k, v in d.items()}
  path = os.path.join(tmp_path, "vox-cpk.pth.tar")
  torch.save({"generator": to_t(gen), "kp_detector": to_t(kp), "discriminator": {},
              "optimizer_generator": {}, "epoch": 0}, path)
  return path


def test_converter_cli_roundtrip_and_backbone(tmp_path):
  """torch.save'd official-structure file -> CLI converter -> orbax -> build() -> animate."""
  from ml_collections import ConfigDict
  from magplus_jax.checkpointing import load_pretrained
  from magplus_jax.models.backbones import get_backbone
  yaml = pytest.importorskip("yaml")
  z, meta, config, params = converted("fomm_tiny64")
  ckpt = _save_official(str(tmp_path), load_fixture("fomm_tiny64")[2])
  cfg_path = os.path.join(tmp_path, "tiny64.yaml")
  with open(cfg_path, "w") as f:
    yaml.safe_dump({"model_params": config}, f)
  out_dir = fomm_port.main([ckpt, str(tmp_path / "fomm_ckpt"), "--config", cfg_path,
                            "--image_size", "64"])
  loaded, meta_out = load_pretrained(out_dir, model="fomm")
  assert meta_out["config"]["image_size"] == 64
  flat_a = jax.tree_util.tree_leaves_with_path(nnx.restore_int_paths(loaded))
  flat_b = dict(jax.tree_util.tree_leaves_with_path(params))
  assert len(flat_a) == len(flat_b)
  for path, v in flat_a:
    np.testing.assert_array_equal(v, flat_b[path])

  src = nhwc(z["source"])
  drv = nhwc(z["driving"][:, 0])[None]
  for key, adapt in (("anim_rel_adapt", True), ("anim_rel_noadapt", False)):
    bb = get_backbone(ConfigDict({"name": "fomm", "checkpoint": out_dir, "image_size": 64,
                                  "align_corners": False, "relative": True,
                                  "adapt_movement_scale": adapt}))
    assert bb.name == "fomm" and bb.image_size == 64
    frames = bb(src, drv, drv[:, 0])
    assert frames.shape == (1, 3, 64, 64, 3)
    assert_close(f"backbone {key}/prediction", frames[0], nhwc(z[f"{key}/prediction"][:, 0]),
                 TOL_PRED)
  with pytest.raises(ValueError, match="disagree"):
    bb(src, drv, drv[:, 0, :32])
  odd = np.zeros((1, 96, 96, 3), np.float32)
  with pytest.raises(ValueError, match="multiple of 64"):
    bb(odd, odd[:, None], odd)


def test_backbone_requires_checkpoint():
  from ml_collections import ConfigDict
  with pytest.raises(ValueError, match="checkpoint"):
    fomm.build(ConfigDict({"name": "fomm", "checkpoint": ""}))


def test_wrong_checkpoint_raises(tmp_path):
  _, _, sd = load_fixture("fomm_tiny64")
  gen, kp = split_sd(sd)
  config = converted("fomm_tiny64")[2]
  # A RAFT file given as FOMM: no generator / kp_detector entries.
  raft_like = {"module.fnet.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(CheckpointMismatchError, match="generator"):
    fomm_port.convert(raft_like, config)
  with pytest.raises(CheckpointMismatchError, match="fnet.conv1.weight"):
    fomm_port.convert_state_dict(raft_like, kp, config)
  # A missing key and a wrong shape are both named.
  bad = dict(gen)
  del bad["final.bias"]
  bad["first.conv.weight"] = np.zeros((1, 3, 7, 7), np.float32)
  with pytest.raises(CheckpointMismatchError, match=r"final\.bias(.|\n)*first\.conv\.weight"):
    fomm_port.convert_state_dict(bad, kp, config)
  # vox-256 weights against a tiny64 model: shape mismatches.
  with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
    fomm_port.convert_state_dict(gen, kp)
  # A converted checkpoint of another model.
  from magplus_jax.checkpointing import save_pretrained
  other = save_pretrained(str(tmp_path / "raft"), {"w": np.zeros(2)}, model="raft")
  with pytest.raises(CheckpointMismatchError, match="raft"):
    fomm.load(other)
