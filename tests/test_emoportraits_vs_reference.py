"""EMOPortraits stage 1 (512 px, released config) against the official PyTorch numbers.

Fixture: tests/golden/emoportraits_512.npz (README-emoportraits.md in ../shared/golden): the
official InferenceWrapper.forward on one source and two driving frames, with deterministic weights
that golden_weights.py rebuilds. The weights go through the real converter functions (the ones the
CLI calls) and the model runs through the backbone's own `prepare` / `drive` functions, one driving
frame per call as the backbone streams them. The full model is ~5 TFLOP per fixture on CPU, hence
`slow`; everything heavy is computed once per module. The adapter around the model (streaming,
the bound source pass, masks, BiSeNet) is tested in test_emoportraits_backbone.py.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden_utils import golden_dir, load_fixture
from magplus_jax.models.backbones import emoportraits as E
from magplus_jax.models.backbones.emoportraits_volume import torch_linspace
from magplus_jax.ports import emoportraits as P
from magplus_jax.ports.common import CheckpointMismatchError

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURE = "emoportraits_512"
DEPTHS = [0, 5, 10, 15]
CHANNELS = [0, 24, 48, 72]


def _load_npz():
  """The fixture's arrays and meta without rebuilding the weights (for the cheap tests)."""
  with np.load(os.path.join(golden_dir(), FIXTURE + ".npz")) as z:
    return {k: z[k] for k in z.files if k.startswith("const/")}, json.loads(str(z["meta"]))


def _atol(meta, key):
  for keys, tol in meta["suggested_atol"].items():
    if key in [k.strip() for k in keys.split(",")]:
      return tol
  raise KeyError(key)


@pytest.fixture(scope="module")
def golden():
  """(arrays, meta, model_sd, headpose_sd); golden_utils checks the weights' sha256."""
  z, meta, sd = load_fixture(FIXTURE)
  model_sd = {k: v for k, v in sd.items() if not k.startswith("head_pose_regressor.")}
  headpose_sd = {k[len("head_pose_regressor.net."):]: v for k, v in sd.items()
                 if k.startswith("head_pose_regressor.")}
  return z, meta, model_sd, headpose_sd


@pytest.fixture(scope="module")
def converted(golden):
  _, meta, model_sd, headpose_sd = golden
  cfg = E.EMOPortraitsConfig.from_official(meta["config"])
  return cfg, dict(model=P.convert_state_dict(model_sd, cfg),
                   headpose=P.convert_headpose_state_dict(headpose_sd), bisenet=None)


@pytest.fixture(scope="module")
def run(golden, converted):
  """Our outputs, rearranged into the fixture's keys and layouts."""
  z, _, _, _ = golden
  cfg, params = converted
  params = jax.tree.map(jnp.asarray, params)
  nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
  source, mask = nhwc(z["source"]), nhwc(z["source_mask"])
  driving = jnp.asarray(np.transpose(z["driving"][:, 0], (0, 2, 3, 1)))[None]   # [1, T, ...]
  opts = E.Options(mask="none", pose_mode="absolute", expression_mode="absolute", chunk_size=1)
  prep = jax.jit(functools.partial(E.prepare, cfg=cfg, opts=opts, debug=True))
  drv = jax.jit(functools.partial(E.drive, cfg=cfg, opts=opts, debug=True))

  out = {}
  vsub = lambda v: np.transpose(np.asarray(v)[:, DEPTHS][..., CHANNELS], (0, 4, 1, 2, 3))
  chw = lambda a: np.transpose(np.asarray(a), (0, 3, 1, 2))
  state = prep(params, source, driving[:, 0], mask)
  dbg = state.pop("debug")
  out.update({"src/theta": dbg["theta"], "src/idt_embed": chw(dbg["idt_embed"]),
              "src/pose_embed": dbg["pose_embed"], "src/img_align": chw(dbg["img_align"]),
              "src/warp_embed": dbg["warp_embed"], "src/xy_warp_sub": dbg["xy_warp"][:, DEPTHS],
              "src/rotation_warp_sub": dbg["rotation_warp"][:, DEPTHS]})
  for k in ("latent_volume", "volume_source", "rot_warped", "xy_warped", "canonical"):
    out[f"src/{k}_sub"] = vsub(dbg[k])
  del dbg
  per_frame = []
  for t in range(driving.shape[1]):
    image, o = drv(params, state, driving[:, t:t + 1])
    feat = np.asarray(o["img_feat"])
    per_frame.append({
        "prediction": chw(image[:, 0]), "drv/theta": o["theta"], "drv/scale": o["scale"],
        "drv/rotation": o["rotation"], "drv/translation": o["translation"],
        "drv/pose_embed": o["pose_embed"], "drv/img_align": chw(o["img_align"]),
        "drv/warp_embed": o["warp_embed"], "drv/uv_warp_sub": np.asarray(o["uv_warp"])[:, DEPTHS],
        "drv/rotation_warp_sub": np.asarray(o["rotation_warp"])[:, DEPTHS],
        "drv/uv_warped_sub": vsub(o["uv_warped"]), "drv/aligned_sub": vsub(o["aligned"]),
        "drv/res_decoder_out_sub": chw(np.asarray(o["res_decoder_out"])[..., ::32]),
        "drv/img_feat_corner": chw(feat[:, 0:64, 0:64, ::16]),
        "drv/img_feat_center": chw(feat[:, 224:288, 224:288, ::16])})
  for k in per_frame[0]:
    out[k] = np.stack([np.asarray(f[k]) for f in per_frame])
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


SOURCE_KEYS = ["src/theta", "src/idt_embed", "src/pose_embed", "src/img_align", "src/warp_embed",
               "src/xy_warp_sub", "src/rotation_warp_sub", "src/latent_volume_sub",
               "src/volume_source_sub", "src/rot_warped_sub", "src/xy_warped_sub",
               "src/canonical_sub"]
DRIVING_KEYS = ["drv/theta", "drv/scale", "drv/rotation", "drv/translation", "drv/pose_embed",
                "drv/img_align", "drv/warp_embed", "drv/uv_warp_sub", "drv/rotation_warp_sub",
                "drv/uv_warped_sub", "drv/aligned_sub", "drv/res_decoder_out_sub",
                "drv/img_feat_corner", "drv/img_feat_center", "prediction"]


@pytest.mark.slow
@pytest.mark.parametrize("key", SOURCE_KEYS + DRIVING_KEYS)
def test_matches_reference(golden, run, key):
  z, meta, _, _ = golden
  ref = z[key]
  ours = run[key].reshape(ref.shape)
  err = float(np.abs(ours - ref).max())
  print(f"{key}: max abs error {err:.3e} (atol {_atol(meta, key):g})")
  assert np.isfinite(ours).all()
  assert err <= _atol(meta, key), f"{key}: max abs error {err:.3e} > {_atol(meta, key)}"


def test_identity_grids_are_torch_linspace():
  z, _ = _load_npz()
  for n in (16, 64, 128):
    np.testing.assert_array_equal(torch_linspace(n), z[f"const/linspace_{n}"])


def test_config_is_the_released_one():
  _, meta = _load_npz()
  assert E.EMOPortraitsConfig.from_official(meta["config"]) == E.EMOPortraitsConfig()
  assert E.EMOPortraitsConfig.from_official(dict(meta["config"], **P.RELEASED_ARGS)) == \
      E.EMOPortraitsConfig()
  with pytest.raises(ValueError, match="use_back"):
    E.EMOPortraitsConfig.from_official(dict(meta["config"], use_back=True))


# ----------------------------------------------------------------------------- converter

def test_converter_cli_input_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    P.convert_file(str(tmp_path / "328_model.pth"), str(tmp_path / "out"))
  with pytest.raises(ValueError, match="ports.bisenet"):
    P.convert_file(str(tmp_path / "79999_iter.pth"), str(tmp_path / "out"), kind="bisenet")


@pytest.mark.slow
def test_wrong_checkpoint_names_keys(golden):
  _, _, model_sd, headpose_sd = golden
  with pytest.raises(CheckpointMismatchError) as e:
    P.convert_state_dict(headpose_sd)
  msg = str(e.value)
  assert "missing keys" in msg and "decoder_nw.img_decoder" in msg
  assert "unexpected keys" in msg and "bn1.bias" in msg
  with pytest.raises(CheckpointMismatchError, match="missing keys"):
    P.convert_headpose_state_dict(model_sd)
  bad = dict(model_sd)
  bad["decoder_nw.res_decoder.0.weight_orig"] = np.zeros((512, 1535, 1, 1), np.float32)
  with pytest.raises(CheckpointMismatchError, match=r"decoder_nw\.res_decoder\.0\.weight_orig"):
    P.convert_state_dict(bad)


def _same_tree(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_b[path]), x, err_msg=str(path))


@pytest.mark.slow
def test_converter_round_trip_stage1(golden, converted, tmp_path):
  """torch.save in the official layout -> the CLI -> load_pretrained -> the same params."""
  torch = pytest.importorskip("torch")
  _, meta, model_sd, headpose_sd = golden
  _, params = converted
  official = {k: torch.from_numpy(v) for k, v in model_sd.items()}
  # What a real model file also holds, ignored like load_state_dict(strict=False) ignores it: the
  # constant buffers the model computes itself, and training-only networks.
  for name in meta["constant_buffers"]:
    official[name] = torch.zeros(1, 3)
  official["discriminator_ds.net.0.weight"] = torch.zeros(4, 3, 3, 3)
  torch.save(official, tmp_path / "328_model.pth")
  del official
  torch.save({k: torch.from_numpy(v) for k, v in headpose_sd.items()},
             tmp_path / "head_pose_regressor.pth")
  P.main([str(tmp_path / "328_model.pth"), str(tmp_path / "stage1")])
  P.main(["--kind", "headpose", str(tmp_path / "head_pose_regressor.pth"),
          str(tmp_path / "headpose")])
  loaded, cfg = E.load(str(tmp_path / "stage1"), str(tmp_path / "headpose"))
  assert cfg == E.EMOPortraitsConfig()
  _same_tree(params["model"], loaded["model"])
  _same_tree(params["headpose"], loaded["headpose"])
  with pytest.raises(CheckpointMismatchError, match="holds model"):
    E.load(str(tmp_path / "headpose"))
