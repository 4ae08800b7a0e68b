"""FSRT port vs the official PyTorch numbers (tests/golden/fsrt_vox256.npz, see
shared/golden/README.md, FSRT section).

Weights come from golden_weights.make_state_dict through the real converter. Decoding all 2 x 65536
pixels costs ~2 TFLOP per frame, so the fast tests decode a strided subset of pixels (every pixel is
decoded independently of the others, so a subset checks the same computation) through the same
chunked `Decoder.__call__`, and the full-image check through the backbone's animate function is
marked slow.
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
from magplus_jax.models.backbones import fsrt
from magplus_jax.ports import fsrt as fsrt_port
from magplus_jax.ports.common import CheckpointMismatchError

jax.config.update("jax_default_matmul_precision", "highest")

NAME = "fsrt_vox256"
# README tolerances for a float32 port (PE argument formed in float32 as torch does).
TOL_KP = 1e-5            # keypoints, expression, detector intermediates
TOL_TOKENS = 1e-4        # encoder tokens (and the patch tokens before the transformer)
TOL_PRED = 3e-4          # prediction (raw and mean-removed), render-MLP input
TOL_QUERIES = 1e-5       # decoder queries, encoder input at probe pixels
PARTS = ("encoder", "decoder", "expression_encoder")


def nhwc(a):
  return np.moveaxis(np.asarray(a), -3, -1)


def split_sd(sd):
  out = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")}
         for p in PARTS + ("kp_detector",)}
  return {p: out[p] for p in PARTS}, out["kp_detector"]


def assert_close(name, got, want, atol):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f"{name}: shape {got.shape} vs golden {want.shape}"
  err = float(np.max(np.abs(got - want)))
  print(f"max abs error {name}: {err:.3g} (atol {atol:g})")
  assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:g}"


@functools.lru_cache(maxsize=None)
def converted():
  z, meta, sd = load_fixture(NAME)
  model_cfg = meta["config"]["model"]  # the fixture ran runs/vox256/vox256.yaml
  assert {k: fsrt.VOX256_CONFIG[k] for k in model_cfg} == model_cfg
  params = fsrt_port.convert_state_dict(*split_sd(sd), fsrt.VOX256_CONFIG)
  return z, meta, params


@functools.lru_cache(maxsize=None)
def model_split():
  return nnx.split(fsrt.from_state_dict(fsrt.VOX256_CONFIG, converted()[2]))


def subset_pixels():
  """Row 0 cols 0..63 (the fixture's first-64 keys), then a strided grid: 2112 pixels."""
  rows, cols = np.meshgrid(np.arange(3, 256, 8), np.arange(1, 256, 4), indexing="ij")
  return np.concatenate([np.arange(64), (rows * 256 + cols).ravel()])


@functools.lru_cache(maxsize=None)
def run_fixture():
  z, _, _ = converted()
  graphdef, state = model_split()
  source, driving = nhwc(z["source"]), nhwc(z["driving"])  # [1,H,W,3], [T,1,H,W,3]

  @jax.jit
  def signals(state, source, driving):
    m = nnx.merge(graphdef, state)
    det = m.keypoints_and_expression(jnp.concatenate([source, driving[:, 0]]))
    sig = m.driving_signals(source, jnp.moveaxis(driving, 0, 1), source)
    x = m.encoder.encoder_input(source, sig["kp_source"], sig["expression_source"])
    patches = m.encoder.patch_tokens(x)
    # The positional encodings alone, fed the golden keypoints / expressions (a keypoint error
    # of 1e-6 would otherwise show up x 4*pi in the highest keypoint octave).
    x_golden = m.encoder.encoder_input(source, z["kp_source"], z["expression_source"][0])
    q_golden = m.decoder.queries(fsrt.pixel_centres(256, 256)[:64], z["kp_driving"][0, 0],
                                 z["expression_driving"][0, 0])
    return det, sig, (x_golden, q_golden), patches, m.encoder.transformer(patches)

  @jax.jit
  def decode(state, z_tokens, kp, expression, pixels):
    m = nnx.merge(graphdef, state)
    rgb = m.decoder(z_tokens, pixels, kp, expression, chunk=1024)  # 3 chunks, the last padded
    q = m.decoder.queries(pixels[:64], kp, expression)
    _, feat = m.decoder.render_queries(q, m.decoder.transformer.project_kv(z_tokens))
    return rgb, feat

  det, sig, golden_in, patches, tokens = jax.tree.map(np.asarray,
                                                      signals(state, source, driving))
  pix = np.asarray(fsrt.pixel_centres(256, 256))[subset_pixels()]
  dec = [jax.tree.map(np.asarray, decode(state, tokens[0], sig["kp_driving"][0, t],
                                         sig["expression_driving"][0, t], pix))
         for t in range(driving.shape[0])]
  return {"det": det, "sig": sig, "input": golden_in[0], "queries": golden_in[1],
          "patches": patches, "tokens": tokens, "dec": dec}


def test_keypoints_and_expression():
  z = converted()[0]
  r = run_fixture()
  det, sig = r["det"], r["sig"]
  assert_close("kp_source", sig["kp_source"], z["kp_source"], TOL_KP)
  assert_close("kp_driving", np.moveaxis(sig["kp_driving"], 1, 0), z["kp_driving"], TOL_KP)
  assert_close("expression_source", sig["expression_source"][:, None], z["expression_source"],
               TOL_KP)
  assert_close("expression_driving", np.moveaxis(sig["expression_driving"], 1, 0),
               z["expression_driving"], TOL_KP)
  assert_close("extra/kp_source/down", det["down"][:1], nhwc(z["extra/kp_source/down"]), TOL_KP)
  assert_close("extra/kp_source/feature_map", det["feature_map"][:1],
               nhwc(z["extra/kp_source/feature_map"]), TOL_KP)
  assert_close("extra/kp_source/heatmap", det["heatmap"][:1],
               np.moveaxis(z["extra/kp_source/heatmap"], 1, -1), TOL_KP)
  assert_close("extra/kp_driving/heatmap", det["heatmap"][1:],
               np.moveaxis(z["extra/kp_driving/heatmap"][:, 0], 1, -1), TOL_KP)


def test_encoder():
  z, meta, _ = converted()
  r = run_fixture()
  probe = np.asarray(meta["probe_pixels"])
  assert_close("extra/encoder_input_at_probe_pixels", r["input"][:, probe[:, 0], probe[:, 1]],
               z["extra/encoder_input_at_probe_pixels"], TOL_QUERIES)
  assert_close("extra/encoder_patch_tokens", r["patches"], z["extra/encoder_patch_tokens"],
               TOL_TOKENS)
  assert_close("encoder_tokens", r["tokens"], z["encoder_tokens"], TOL_TOKENS)


def test_decoder_on_pixel_subset():
  z = converted()[0]
  r = run_fixture()
  assert_close("extra/decoder_queries_first64", r["queries"][None],
               z["extra/decoder_queries_first64"], TOL_QUERIES)
  feat0 = r["dec"][0][1]
  assert_close("extra/decoder_render_mlp_input_first64", feat0[None],
               z["extra/decoder_render_mlp_input_first64"], TOL_PRED)
  idx = subset_pixels()
  for t, (rgb, _) in enumerate(r["dec"]):
    want = z["prediction"][t, 0].reshape(-1, 3)[idx]
    assert_close(f"prediction[{t}] (pixel subset)", rgb, want, TOL_PRED)
    assert_close(f"prediction[{t}] - mean (pixel subset)", rgb - rgb.mean(0),
                 want - want.mean(0), TOL_PRED)


def test_relative_driving_keypoints():
  """relative=True with driving_ref = driving frame 0: frame 0 renders the source keypoints,
  later frames add the driver's displacement (scaled by the hull ratio when adapting)."""
  z = converted()[0]
  graphdef, state = model_split()
  source, driving = nhwc(z["source"]), np.moveaxis(nhwc(z["driving"]), 0, 1)

  @jax.jit
  def rel(state, adapt):
    return nnx.merge(graphdef, state).driving_signals(
        source, driving, driving[:, 0], relative=True, adapt_movement_scale=adapt)

  kp_s, kp_d = z["kp_source"], z["kp_driving"][:, 0]
  for adapt in (False, True):
    got = np.asarray(rel(state, adapt)["kp_driving"][0])
    scale = 1.0
    if adapt:
      spatial = pytest.importorskip("scipy.spatial")
      scale = np.sqrt(spatial.ConvexHull(kp_s[0]).volume / spatial.ConvexHull(kp_d[0]).volume)
    assert_close(f"relative kp (adapt={adapt})", got, (kp_d - kp_d[:1]) * scale + kp_s, TOL_KP)


@pytest.mark.slow
def test_full_prediction_through_animate():
  """Every pixel of both frames, through the backbone's jitted animate (absolute keypoints,
  the demo default), raw (unclamped) output."""
  z = converted()[0]
  graphdef, state = model_split()
  animate, params = fsrt.make_animate_fn(nnx.merge(graphdef, state), chunk=4096, clamp=False)
  source, driving = nhwc(z["source"]), np.moveaxis(nhwc(z["driving"]), 0, 1)
  pred = np.asarray(animate(params, source, driving, source))[0]  # [T, H, W, 3]
  want = z["prediction"][:, 0]
  assert_close("prediction", pred, want, TOL_PRED)
  assert_close("prediction - mean", pred - pred.mean((1, 2), keepdims=True),
               want - want.mean((1, 2), keepdims=True), TOL_PRED)


def _save_official(tmp_path, sd):
  torch = pytest.importorskip("torch")
  parts, kp = split_sd(sd)
  to_t = lambda d: {k: torch.from_numpy(np.array(v)) for k, v in d.items()}
  ckpt = os.path.join(tmp_path, "vox256.pt")
  torch.save({**{p: to_t(parts[p]) for p in PARTS}, "optimizer": {}, "it": 0, "epoch_it": 0},
             ckpt)
  kp_path = os.path.join(tmp_path, "kp_detector.pt")
  torch.save(to_t(kp), kp_path)
  return ckpt, kp_path


def test_converter_cli_roundtrip_and_build(tmp_path):
  from ml_collections import ConfigDict
  from magplus_jax.checkpointing import load_pretrained
  from magplus_jax.models.backbones import get_backbone
  z, _, params = converted()
  ckpt, kp_path = _save_official(str(tmp_path), load_fixture(NAME)[2])
  out_dir = fsrt_port.main([ckpt, kp_path, str(tmp_path / "fsrt_ckpt")])
  loaded, meta = load_pretrained(out_dir, model="fsrt")
  assert meta["config"]["image_size"] == 256
  flat_a = jax.tree_util.tree_leaves_with_path(nnx.restore_int_paths(loaded))
  flat_b = dict(jax.tree_util.tree_leaves_with_path(params))
  assert len(flat_a) == len(flat_b)
  for path, v in flat_a:
    np.testing.assert_array_equal(v, flat_b[path])
  bb = get_backbone(ConfigDict({"name": "fsrt", "checkpoint": out_dir, "image_size": 256}))
  assert bb.name == "fsrt" and bb.image_size == 256
  src = nhwc(z["source"])
  with pytest.raises(ValueError, match="disagree"):   # raised while tracing, before any work
    bb(src, src[:, None], src[:, :128])
  small = src[:, :192, :192]
  with pytest.raises(ValueError, match="multiple of 128"):
    bb(small, small[:, None], small)
  with pytest.raises(ValueError, match="checkpoint"):
    fsrt.build(ConfigDict({"name": "fsrt", "checkpoint": ""}))


def test_wrong_checkpoint_raises(tmp_path):
  _, _, sd = load_fixture(NAME)
  parts, kp = split_sd(sd)
  fomm_like = {"generator": {}, "kp_detector": kp}
  with pytest.raises(CheckpointMismatchError, match="expression_encoder"):
    fsrt_port.convert(fomm_like, kp)
  with pytest.raises(CheckpointMismatchError, match="bare state dict"):
    fsrt_port.convert(parts, parts)
  bad = dict(parts, decoder=dict(parts["decoder"]))
  del bad["decoder"]["render_mlp.8.bias"]
  bad["decoder"]["allocation_transformer.transformer.layers.0.0.fn.to_q.weight"] = np.zeros(
      (768, 481), np.float32)
  with pytest.raises(CheckpointMismatchError, match=r"render_mlp\.8\.bias(.|\n)*to_q\.weight"):
    fsrt_port.convert(bad, kp)
  from magplus_jax.checkpointing import save_pretrained
  other = save_pretrained(str(tmp_path / "fomm"), {"w": np.zeros(2)}, model="fomm")
  with pytest.raises(CheckpointMismatchError, match="fomm"):
    fsrt.load(other)
