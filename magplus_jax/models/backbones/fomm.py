"""First Order Motion Model (Siarohin et al., NeurIPS 2019) as a frozen MagPlus backbone.

A Flax port of the official AliaksandrSiarohin/first-order-model (KPDetector in keypoints.py,
DenseMotionNetwork and OcclusionAwareGenerator here), configured by the official `model_params`
dict (`config/vox-256.yaml`: `common_params`, `kp_detector_params`, `generator_params`). The
backbone runs in eval mode (BatchNorm on running statistics); magplus_jax/fomm_training.py trains
the same modules (nnx `model.train()`). Weights come from `vox-cpk.pth.tar` through
`python -m magplus_jax.ports.fomm`, or from a FOMM training run (`fomm_training.export`).

align_corners (the `backbone_config.align_corners` field, default False):
  FOMM builds its sampling grids with corner-aligned coordinates (x = 2*i/(w-1) - 1) and never
  passes `align_corners` to `F.grid_sample`. The released checkpoints were trained under torch 1.0,
  whose grid_sample read -1/+1 as the *centres* of the border pixels (= align_corners=True): an
  identity grid then reproduces the image exactly. torch >= 1.3 reads the same call as
  align_corners=False (-1/+1 are the outer pixel *edges*), which shifts and slightly shrinks every
  warp by half a pixel; this is what the official demo does when run today, and what the golden
  reference numbers were computed with — hence the default. True gives the training-time
  behaviour of the official weights. The choice applies to both grid_samples (the sparse
  deformations in DenseMotionNetwork and the feature / image warps in the generator). The bilinear
  resizes of the deformation and occlusion map are torch's `interpolate(..., mode="bilinear")`,
  which already defaulted to align_corners=False in torch 1.0, so they always use False.

Relative motion transfer (the demo's `--relative --adapt_scale`): the driving keypoints move the
source keypoints by their displacement from the reference frame, scaled by
sqrt(hull area(source kp) / hull area(reference kp)) when `adapt_movement_scale`; jacobians are
transferred as J_d J_ref^-1 J_s. The official code computes the scale from batch element 0 (scipy
ConvexHull) and applies it to the whole batch; here each batch element gets its own scale (the
same for batch 1) and the hull area is computed inside jit.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from magplus_jax.checkpointing import load_pretrained
from magplus_jax.models import resample
from magplus_jax.models.backbones import Backbone
from magplus_jax.models.backbones.keypoints import (AntiAliasInterpolation2d, DownBlock2d,
                                                    Hourglass, KPDetector, UpBlock2d, batch_norm)

Array = jax.Array

# config/vox-256.yaml model_params of the official repository.
VOX256_MODEL_PARAMS = {
    "common_params": {"num_kp": 10, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {"temperature": 0.1, "block_expansion": 32, "max_features": 1024,
                           "scale_factor": 0.25, "num_blocks": 5},
    "generator_params": {"block_expansion": 64, "max_features": 512, "num_down_blocks": 2,
                         "num_bottleneck_blocks": 6, "estimate_occlusion_map": True,
                         "dense_motion_params": {"block_expansion": 64, "max_features": 1024,
                                                 "num_blocks": 5, "scale_factor": 0.25}},
}


def _pad2(p: int) -> list[tuple[int, int]]:
  return [(p, p), (p, p)]


def kp2gaussian(kp: Array, h: int, w: int, kp_variance: float) -> Array:
  """Unnormalised Gaussians at the keypoints. kp [B, K, 2] -> [B, h, w, K]."""
  grid = resample.make_coordinate_grid(h, w, kp.dtype)  # [h, w, 2]
  diff = grid[None, :, :, None, :] - kp[:, None, None, :, :]
  return jnp.exp(-0.5 * jnp.sum(diff ** 2, axis=-1) / kp_variance)


def inverse_2x2(m: Array) -> Array:
  """Closed-form inverse of [..., 2, 2] matrices (keypoint jacobians are well conditioned)."""
  a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
  det = a * d - b * c
  return jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2) / det[..., None, None]


class SameBlock2d(nnx.Module):
  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
               *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                         padding=_pad2(padding), rngs=rngs)
    self.norm = batch_norm(out_features, rngs)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.norm(self.conv(x)))


class ResBlock2d(nnx.Module):
  """Pre-activation residual block (BN -> ReLU -> conv, twice)."""

  def __init__(self, features: int, kernel_size: int = 3, padding: int = 1, *, rngs: nnx.Rngs):
    k = (kernel_size, kernel_size)
    self.conv1 = nnx.Conv(features, features, k, padding=_pad2(padding), rngs=rngs)
    self.conv2 = nnx.Conv(features, features, k, padding=_pad2(padding), rngs=rngs)
    self.norm1 = batch_norm(features, rngs)
    self.norm2 = batch_norm(features, rngs)

  def __call__(self, x: Array) -> Array:
    out = self.conv1(jax.nn.relu(self.norm1(x)))
    out = self.conv2(jax.nn.relu(self.norm2(out)))
    return out + x


class DenseMotionNetwork(nnx.Module):
  """Dense backward deformation (driving -> source) from K local affine motions plus background."""

  def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
               num_channels: int, estimate_occlusion_map: bool = False, scale_factor: float = 1.0,
               kp_variance: float = 0.01, align_corners: bool = False, *, rngs: nnx.Rngs):
    self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (num_channels + 1), num_blocks,
                               max_features, rngs=rngs)
    feat = self.hourglass.out_filters
    self.mask = nnx.Conv(feat, num_kp + 1, (7, 7), padding=_pad2(3), rngs=rngs)
    self.occlusion = (nnx.Conv(feat, 1, (7, 7), padding=_pad2(3), rngs=rngs)
                      if estimate_occlusion_map else None)
    self.num_kp = num_kp
    self.kp_variance = kp_variance
    self.align_corners = align_corners
    self.down = AntiAliasInterpolation2d(num_channels, scale_factor) if scale_factor != 1 else None
    self.size_multiple = (self.down.stride if self.down is not None else 1) * 2 ** num_blocks

  def heatmap_representation(self, h: int, w: int, kp_driving: dict, kp_source: dict) -> Array:
    """[B, h, w, K+1]: driving minus source Gaussians, a zero map for the background first."""
    heat = (kp2gaussian(kp_driving["value"], h, w, self.kp_variance)
            - kp2gaussian(kp_source["value"], h, w, self.kp_variance))
    return jnp.concatenate([jnp.zeros_like(heat[..., :1]), heat], axis=-1)

  def sparse_motions(self, h: int, w: int, kp_driving: dict, kp_source: dict) -> Array:
    """[B, K+1, h, w, 2] sampling grids: identity, then one affine motion per keypoint."""
    kd, ks = kp_driving["value"], kp_source["value"]
    identity = resample.make_coordinate_grid(h, w, kd.dtype)
    rel = identity[None, None] - kd[:, :, None, None, :]  # [B, K, h, w, 2]
    if "jacobian" in kp_driving:
      jac = jnp.matmul(kp_source["jacobian"], inverse_2x2(kp_driving["jacobian"]))
      jac = jac[:, :, None, None]  # [B, K, 1, 1, 2, 2]
      rel = jnp.stack([jac[..., 0, 0] * rel[..., 0] + jac[..., 0, 1] * rel[..., 1],
                       jac[..., 1, 0] * rel[..., 0] + jac[..., 1, 1] * rel[..., 1]], axis=-1)
    to_source = rel + ks[:, :, None, None, :]
    background = jnp.broadcast_to(identity, (kd.shape[0], 1, h, w, 2))
    return jnp.concatenate([background, to_source], axis=1)

  def __call__(self, source: Array, kp_driving: dict, kp_source: dict) -> dict[str, Array]:
    """source [B, H, W, C] -> deformation [B, h, w, 2], mask [B, h, w, K+1],
    occlusion_map [B, h, w, 1], sparse_deformed [B, K+1, h, w, C], plus intermediates."""
    if self.down is not None:
      source = self.down(source)
    b, h, w, c = source.shape
    heat = self.heatmap_representation(h, w, kp_driving, kp_source)
    motions = self.sparse_motions(h, w, kp_driving, kp_source)
    deformed = jax.vmap(lambda g: resample.grid_sample(source, g, self.align_corners),
                        in_axes=1, out_axes=1)(motions)  # [B, K+1, h, w, C]
    # torch concatenates per keypoint [heatmap, deformed image] and flattens (K+1, C+1).
    x = jnp.concatenate([jnp.moveaxis(heat, -1, 1)[..., None], deformed], axis=-1)
    x = jnp.moveaxis(x, 1, 3).reshape(b, h, w, (self.num_kp + 1) * (c + 1))
    feat = self.hourglass(x)
    mask = jax.nn.softmax(self.mask(feat), axis=-1)
    deformation = jnp.einsum("bkhwd,bhwk->bhwd", motions, mask,
                             precision=jax.lax.Precision.HIGHEST)
    out = {"source_down": source, "heatmap_representation": heat, "sparse_motion": motions,
           "sparse_deformed": deformed, "mask": mask, "deformation": deformation}
    if self.occlusion is not None:
      out["occlusion_map"] = jax.nn.sigmoid(self.occlusion(feat))
    return out


class OcclusionAwareGenerator(nnx.Module):
  """Encoder -> warp by the dense motion (times occlusion) -> residual bottleneck -> decoder."""

  def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
               num_down_blocks: int, num_bottleneck_blocks: int,
               estimate_occlusion_map: bool = False, dense_motion_params: dict | None = None,
               estimate_jacobian: bool = False, align_corners: bool = False, *, rngs: nnx.Rngs):
    del estimate_jacobian  # the official generator takes it and ignores it, as here
    self.align_corners = align_corners
    self.dense_motion_network = (
        DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                           estimate_occlusion_map=estimate_occlusion_map,
                           align_corners=align_corners, rngs=rngs, **dense_motion_params)
        if dense_motion_params is not None else None)
    width = lambda i: min(max_features, block_expansion * (2 ** i))
    self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3, rngs=rngs)
    self.down_blocks = nnx.List([DownBlock2d(width(i), width(i + 1), rngs=rngs)
                                 for i in range(num_down_blocks)])
    self.up_blocks = nnx.List([
        UpBlock2d(width(num_down_blocks - i), width(num_down_blocks - i - 1), rngs=rngs)
        for i in range(num_down_blocks)])
    self.bottleneck = nnx.List([ResBlock2d(width(num_down_blocks), rngs=rngs)
                                for _ in range(num_bottleneck_blocks)])
    self.final = nnx.Conv(block_expansion, num_channels, (7, 7), padding=_pad2(3), rngs=rngs)
    self.size_multiple = math.lcm(2 ** num_down_blocks, *(
        [self.dense_motion_network.size_multiple] if self.dense_motion_network is not None else []))

  def encode(self, source: Array) -> Array:
    """The source-only half: [B, H, W, C] -> features [B, H/2**n, W/2**n, F]."""
    out = self.first(source)
    for block in self.down_blocks:
      out = block(out)
    return out

  def deform_input(self, x: Array, deformation: Array) -> Array:
    h, w = x.shape[1:3]
    deformation = resample.resize_bilinear(deformation, (h, w), align_corners=False)
    return resample.grid_sample(x, deformation, self.align_corners)

  def decode(self, source: Array, features: Array, kp_driving: dict,
             kp_source: dict) -> dict[str, Array]:
    """source [B, H, W, C] and its `encode` features -> dict with prediction [B, H, W, C] in
    [0, 1], deformed (source warped) [B, H, W, C], and the dense-motion outputs."""
    out = {}
    if self.dense_motion_network is not None:
      out.update(self.dense_motion_network(source, kp_driving, kp_source))
      deformation = out["deformation"]
      features = self.deform_input(features, deformation)
      if "occlusion_map" in out:
        occlusion = resample.resize_bilinear(out["occlusion_map"], features.shape[1:3],
                                             align_corners=False)
        features = features * occlusion
      out["deformed"] = self.deform_input(source, deformation)
    for block in self.bottleneck:
      features = block(features)
    for block in self.up_blocks:
      features = block(features)
    out["prediction"] = jax.nn.sigmoid(self.final(features))
    return out

  def __call__(self, source: Array, kp_driving: dict, kp_source: dict) -> dict[str, Array]:
    return self.decode(source, self.encode(source), kp_driving, kp_source)


def convex_hull_area(points: Array) -> Array:
  """Area of the convex hull of [..., K, 2] points, jittable (K is small: O(K^3) work).

  A directed pair (i, j) is a counter-clockwise hull edge when no point lies strictly to its right
  and every point on its line lies on the segment (so collinear hull points count once, through
  the longest edge); among coincident points only the first takes part. The area is then the
  shoelace sum over those edges. Fewer than 3 non-collinear points give 0.
  """
  p = points - jnp.mean(points, axis=-2, keepdims=True)  # centred: less cancellation
  k = p.shape[-2]
  pi = p[..., :, None, None, :]  # edge start i
  pj = p[..., None, :, None, :]  # edge end j
  pk = p[..., None, None, :, :]  # tested point k
  e = pj - pi
  r = pk - pi
  cross = e[..., 0] * r[..., 1] - e[..., 1] * r[..., 0]  # [..., i, j, k]
  dot = e[..., 0] * r[..., 0] + e[..., 1] * r[..., 1]
  on_segment = (cross == 0) & (dot >= 0) & (dot <= jnp.sum(e * e, axis=-1))
  # The endpoints themselves are excluded by index: with FMA contraction XLA may not give an
  # exact 0 for cross(e, e).
  idx = jnp.arange(k)
  endpoint = (idx[:, None, None] == idx[None, None, :]) | (idx[None, :, None] == idx[None, None, :])
  is_edge = jnp.all((cross > 0) | on_segment | endpoint, axis=-1)
  same = jnp.all(p[..., :, None, :] == p[..., None, :, :], axis=-1)  # [..., K, K]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)
  first = ~jnp.any(same & earlier, axis=-1)  # no earlier coincident point
  is_edge &= first[..., :, None] & first[..., None, :] & ~jnp.eye(k, dtype=bool)
  xi, yi = p[..., :, None, 0], p[..., :, None, 1]
  xj, yj = p[..., None, :, 0], p[..., None, :, 1]
  return 0.5 * jnp.sum(jnp.where(is_edge, xi * yj - xj * yi, 0.0), axis=(-2, -1))


def movement_scale(kp_source: Array, kp_driving_initial: Array) -> Array:
  """sqrt(hull area) ratio, [B, K, 2] x2 -> [B]; 1 where the reference hull is degenerate (the
  official code would fail there with a scipy QhullError)."""
  src = convex_hull_area(kp_source)
  drv = convex_hull_area(kp_driving_initial)
  ok = drv > 0
  return jnp.where(ok, jnp.sqrt(src) / jnp.sqrt(jnp.where(ok, drv, 1.0)), 1.0)


def normalize_kp(kp_source: dict, kp_driving: dict, kp_driving_initial: dict, *,
                 adapt_movement_scale: bool | Array = False, relative: bool = True,
                 relative_jacobian: bool | None = None) -> dict[str, Array]:
  """The demo's motion transfer, batched over frames.

  kp_source, kp_driving_initial: value [B, K, 2] (jacobian [B, K, 2, 2]); kp_driving: value
  [B, T, K, 2] or [B, K, 2]. adapt_movement_scale may be a traced bool. Returns the driving
  keypoints to render with ('movement_scale' [B] included).
  """
  relative_jacobian = relative if relative_jacobian is None else relative_jacobian
  vd = kp_driving["value"]
  frames = vd.ndim == 4
  lift = (lambda a: a[:, None]) if frames else (lambda a: a)
  scale = jnp.where(adapt_movement_scale,
                    movement_scale(kp_source["value"], kp_driving_initial["value"]), 1.0)
  out = dict(kp_driving)
  if relative:
    diff = (vd - lift(kp_driving_initial["value"])) * lift(scale[:, None, None])
    out["value"] = diff + lift(kp_source["value"])
    if relative_jacobian and "jacobian" in kp_driving:
      jd = jnp.matmul(kp_driving["jacobian"], lift(inverse_2x2(kp_driving_initial["jacobian"])))
      out["jacobian"] = jnp.matmul(jd, lift(kp_source["jacobian"]))
  out["movement_scale"] = scale
  return out


def _kp_only(kp: dict) -> dict:
  return {k: v for k, v in kp.items() if k in ("value", "jacobian")}


class FOMM(nnx.Module):
  """KPDetector + OcclusionAwareGenerator, built from the official `model_params` dict."""

  def __init__(self, model_params: dict, *, align_corners: bool = False, rngs: nnx.Rngs):
    common = dict(model_params["common_params"])
    self.kp_detector = KPDetector(**model_params["kp_detector_params"], **common, rngs=rngs)
    self.generator = OcclusionAwareGenerator(**model_params["generator_params"], **common,
                                             align_corners=align_corners, rngs=rngs)
    self.size_multiple = math.lcm(self.kp_detector.size_multiple, self.generator.size_multiple)

  def animate(self, source: Array, driving: Array, driving_ref: Array, *, relative: bool = True,
              adapt_movement_scale: bool | Array = True) -> tuple[Array, dict]:
    """source [B, H, W, C], driving [B, T, H, W, C], driving_ref [B, H, W, C] ->
    (frames [B, T, H, W, C], kp_norm with value [B, T, K, 2], ...).

    Frames are folded into the batch; the source keypoints and encoder features are computed
    once and broadcast over T.
    """
    b, t = driving.shape[:2]
    frames = driving.reshape((b * t,) + driving.shape[2:])
    kp_all = self.kp_detector(jnp.concatenate([source, driving_ref, frames], axis=0))
    kp_all = _kp_only(kp_all)
    kp_source = jax.tree.map(lambda a: a[:b], kp_all)
    kp_ref = jax.tree.map(lambda a: a[b:2 * b], kp_all)
    kp_driving = jax.tree.map(lambda a: a[2 * b:].reshape((b, t) + a.shape[1:]), kp_all)
    kp_norm = normalize_kp(kp_source, kp_driving, kp_ref, relative=relative,
                           adapt_movement_scale=adapt_movement_scale)
    fold = lambda a: a.reshape((b * t,) + a.shape[2:])
    repeat = lambda a: jnp.repeat(a, t, axis=0)
    features = self.generator.encode(source)
    kp_frames = {k: fold(kp_norm[k]) for k in ("value", "jacobian") if k in kp_norm}
    out = self.generator.decode(repeat(source), repeat(features), kp_frames,
                                jax.tree.map(repeat, kp_source))
    pred = out["prediction"].reshape((b, t) + out["prediction"].shape[1:])
    return pred, kp_norm


def check_inputs(what: str, source: Array, driving: Array, driving_ref: Array,
                 size_multiple: int) -> None:
  """One clear ValueError for inputs that do not fit the backbone interface or the network."""
  if source.ndim != 4 or driving.ndim != 5 or driving_ref.ndim != 4:
    raise ValueError(f"{what}.animate: expected source [B,H,W,3], driving [B,T,H,W,3], "
                     f"driving_ref [B,H,W,3]; got {source.shape}, {driving.shape}, "
                     f"{driving_ref.shape}")
  if not (source.shape == driving_ref.shape == driving.shape[:1] + driving.shape[2:]):
    raise ValueError(f"{what}.animate: source {source.shape}, driving {driving.shape} and "
                     f"driving_ref {driving_ref.shape} disagree in batch, size or channels")
  if source.shape[1] % size_multiple or source.shape[2] % size_multiple:
    raise ValueError(f"{what}.animate: image size {source.shape[1:3]} must be a multiple of "
                     f"{size_multiple} for this network (its downscale and poolings)")


def model_config(meta_config: dict) -> dict:
  """The `model_params` part of a checkpoint's config (which may also carry image_size)."""
  return {k: meta_config[k] for k in ("common_params", "kp_detector_params", "generator_params")}


def abstract_model(model_params: dict, align_corners: bool = False) -> FOMM:
  """The model with shapes only (no random init): the template for loading and converting."""
  return nnx.eval_shape(lambda: FOMM(model_params, align_corners=align_corners,
                                     rngs=nnx.Rngs(0)))


def from_state_dict(model_params: dict, state: dict, align_corners: bool = False) -> FOMM:
  """A FOMM module holding `state` (the pure dict the converter writes)."""
  model = abstract_model(model_params, align_corners)
  graphdef, abstract = nnx.split(model)
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, nnx.restore_int_paths(state)))
  return nnx.merge(graphdef, abstract)


def load(ckpt_dir: str, align_corners: bool = False) -> tuple[FOMM, dict]:
  """(model, config) from a directory written by `python -m magplus_jax.ports.fomm`."""
  state, meta = load_pretrained(ckpt_dir, model="fomm")
  config = meta["config"]
  return from_state_dict(model_config(config), state, align_corners), config


def make_animate_fn(model: FOMM, *, relative: bool = True, adapt_movement_scale: bool = True):
  """(animate, params): `animate(params, source, driving, driving_ref)`, pure and jitted."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def animate(params: Any, source: Array, driving: Array, driving_ref: Array) -> Array:
    check_inputs("fomm", source, driving, driving_ref, model.size_multiple)
    m = nnx.merge(graphdef, params)
    frames, _ = m.animate(source, driving, driving_ref, relative=relative,
                          adapt_movement_scale=adapt_movement_scale)
    return frames

  return animate, params


def build(backbone_config, flow=None) -> Backbone:
  """Backbone from `config.backbone` (name="fomm"): checkpoint (converted directory, required;
  or one exported by magplus_jax/fomm_training.py), image_size (256), align_corners (False, see
  the module docstring), relative (True),
  adapt_movement_scale (True, as the official README's `--relative --adapt_scale`).

  name="fomm_small": the FOMM trained here by configs/fomm_small.py and shipped in the package
  (magplus_jax/pretrained/fomm_small) unless a checkpoint is given. image_size 0 (or absent):
  the size the checkpoint was trained at (its meta), else 256."""
  del flow  # FOMM drives from images directly
  name = backbone_config.get("name", "fomm")
  ckpt = backbone_config.get("checkpoint", "")
  if not ckpt and name == "fomm_small":
    from magplus_jax import pretrained  # pylint: disable=g-import-not-at-top
    ckpt = pretrained.backbone_path(name)
  if not ckpt:
    raise ValueError("config.backbone.checkpoint is empty: FOMM needs converted weights; run "
                     "`python -m magplus_jax.ports.fomm vox-cpk.pth.tar OUT_DIR` and set it to "
                     "OUT_DIR (or use the FOMM trained here: config.backbone.name=fomm_small)")
  align_corners = bool(backbone_config.get("align_corners", False))
  model, config = load(ckpt, align_corners=align_corners)
  if "align_corners" in config and bool(config["align_corners"]) != align_corners:
    # Checkpoints trained here (magplus_jax/fomm_training.py) record the convention they learnt.
    logging.warning("FOMM checkpoint %s was trained with align_corners=%s; running it with "
                    "config.backbone.align_corners=%s shifts its warps by half a pixel", ckpt,
                    config["align_corners"], align_corners)
  animate, params = make_animate_fn(
      model, relative=bool(backbone_config.get("relative", True)),
      adapt_movement_scale=bool(backbone_config.get("adapt_movement_scale", True)))
  size = backbone_config.get("image_size", 0) or config.get("image_size", 256)
  return Backbone(name=name, params=params, animate=animate, image_size=int(size))
