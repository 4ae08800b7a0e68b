"""MetaPortrait (Zhang et al., CVPR 2023) as a MagPlus backbone: base 256 model + optional temporal SR.

Port of Meta-Portrait/MetaPortrait @ 4c3c9e38, configured as `base_model/config/
meta_portrait_256_eval.yaml` (this file) and `sr_model/options/test/same_id_demo.yml`
(`metaportrait_sr.py`, 256 -> 512). Checkpoints: `python -m magplus_jax.ports.metaportrait`.

The base generator runs in two stages per frame, as the official inference does:
  warp:   ladder style (LadderEncoder) + dense motion (ADAIN hourglass) from cat(source, source
          line image, driving line image) -> a 64x64 deformation and an occlusion map;
  refine: the source's feature pyramid, warped, plus labels (occlusion, 8 gaze heatmaps, line and
          mouth-line images) condition a SPADE decoder seeded by the source identity embedding.
Its output is a tanh image; like the official demo (which saves clip(255 * p, 0, 255)) `animate`
clips it to [0, 1].

Driving, and its limits. MetaPortrait is driven by 669 dense landmarks per frame from Microsoft's
dense face tracker and by a source identity embedding from an internal face-recognition network.
Neither network is released (official issues #4 and #10), so this backbone:
  * reads the source landmarks (`config.landmarks`, the official `src_<k>_ldmk.npy`: [669, 2],
    x, y in [0, 1]), optionally the landmarks of driving frame 0 (`config.driving_landmarks`, an
    official `<frame>_ldmk.npy`; default: the source landmarks, i.e. the source *is* frame 0 of the
    driver's layout), and the identity embedding (`config.id_embedding`, `src_<k>_id.npy`, 256
    values);
  * moves the frame-0 landmarks to every driving frame along the project's optical flow
    (FlowEstimator passed to `build`, flow driving_ref -> frame t read at each landmark), and
  * applies the motion relatively: source landmarks + (tracked landmarks - frame-0 landmarks).
Limits: flow tracking follows the skin texture, so occluded points (a closing eyelid, lips
pressing together, the iris) move with whatever covers them, and points off the face edge drift
with the background; tracking is measured from frame 0 each time (no drift accumulation) but large
head turns exceed what flow can follow. The released weights were trained on the tracker's
landmarks and the internal embedding: landmarks or embeddings from other sources (e.g. a sparse
detector, InsightFace) are out of distribution. The same landmarks and embedding are used for every
item of a batch.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax import checkpointing
from magplus_jax.models import resample
from magplus_jax.models.backbones import Backbone
from magplus_jax.models.backbones import metaportrait_inputs as inputs
from magplus_jax.models.backbones.metaportrait_inputs import track_landmarks  # noqa: F401 (API)
from magplus_jax.models.backbones.metaportrait_layers import (
    LayerNorm2d, Hourglass, SPADEResBlock, conv, deform, instance_norm, lrelu, up2_bilinear)

Array = jax.Array
MODEL_NAME = "metaportrait_base"
IMAGE_SIZE = 256
ID_DIM = 256
STYLE_DIM = 512
LABEL_NC = 18  # occlusion 1 + gaze 8 + lines 6 + mouth lines 3


@dataclasses.dataclass(frozen=True)
class BaseConfig:
  """meta_portrait_256_eval.yaml, generator part."""
  block_expansion: int = 64
  max_features: int = 512
  dm_block_expansion: int = 64
  dm_max_features: int = 1024
  dm_num_blocks: int = 5
  dm_dec_lease: int = 2
  spade_conv_dim: int = 32      # SPADE widths 16/8/4/2/1 x this; 16x must equal the deepest feature
  ladder_width: int = 64        # LadderEncoder widths 1/2/4/8/8/8 x this


class LadderEncoder(nnx.Module):
  """6 stride-2 convs (64..512) with instance norm, fc of the NCHW flatten, L2 normalised."""

  def __init__(self, cfg: BaseConfig, rngs: nnx.Rngs, cin: int = 9):
    for i, mult in enumerate((1, 2, 4, 8, 8, 8)):
      cout = cfg.ladder_width * mult
      setattr(self, f"layer{i + 1}", conv(cin, cout, 3, rngs, stride=2, bias=False))
      cin = cout
    self.fc = nnx.Linear(cin * 4 * 4, STYLE_DIM, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    for i in range(6):
      x = instance_norm(getattr(self, f"layer{i + 1}")(x if i == 0 else lrelu(x)))
    x = lrelu(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)   # torch's channel-major flatten
    x = self.fc(x)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)


class DenseMotionNetwork(nnx.Module):
  """ADAIN hourglass -> (LayerNorm2d, LeakyReLU 0.1, 7x7 conv) heads for flow and occlusion."""

  def __init__(self, cfg: BaseConfig, rngs: nnx.Rngs, cin: int = 9):
    self.hourglass = Hourglass(cin, cfg.dm_block_expansion, cfg.dm_max_features, cfg.dm_num_blocks,
                               cfg.dm_dec_lease, "adain", True, STYLE_DIM, rngs)
    c = self.hourglass.out_features
    self.reger_norm = LayerNorm2d(c)
    self.reger = conv(c, 2, 7, rngs)
    self.occlusion_norm = LayerNorm2d(c)
    self.occlusion = conv(c, 1, 7, rngs)

  def __call__(self, x: Array, style: Array) -> dict:
    feat, _ = self.hourglass(x, style)
    flow = self.reger(lrelu(self.reger_norm(feat), 0.1))          # pixels of the 64 grid
    _, h, w, _ = flow.shape
    flow = 2 * jnp.concatenate([flow[..., :1] / (w - 1), flow[..., 1:] / (h - 1)], axis=-1)
    deformation = resample.make_coordinate_grid(h, w)[None] + flow
    occ = jax.nn.sigmoid(self.occlusion(lrelu(self.occlusion_norm(feat), 0.1)))
    occ = resample.resize_bilinear(occ, (x.shape[1], x.shape[2]))
    return {"flow": flow, "deformation": deformation, "occlusion_map": occ, "hourglass": feat}


class SPADEGenerator(nnx.Module):
  """id (1x1) -> 4x4 transposed conv -> 7 SPADE-ID residual blocks with bilinear x2 between."""

  def __init__(self, cfg: BaseConfig, rngs: nnx.Rngs):
    nf = cfg.spade_conv_dim
    ch = [16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf, nf]
    feat = [min(cfg.max_features, cfg.block_expansion * 2 ** i) for i in (2, 1, 0)]
    labels = [16 * nf + LABEL_NC] * 4 + [c + LABEL_NC for c in feat]
    # The transposed 4x4 conv of a 1x1 input is a linear map to a 4x4 grid.
    self.conv1_kernel = nnx.Param(jnp.zeros((ID_DIM, 4, 4, ch[0]), jnp.float32))
    self.conv1_bias = nnx.Param(jnp.zeros((ch[0],), jnp.float32))
    self.names = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")
    for i, name in enumerate(self.names):
      setattr(self, name, SPADEResBlock(ch[i], ch[i + 1], labels[i], ID_DIM, rngs))
    self.conv_img = conv(nf, 3, 3, rngs)

  def __call__(self, attrs: list[Array], id_emb: Array, taps: dict | None = None) -> Array:
    x = jnp.einsum("bi,ihwo->bhwo", id_emb, self.conv1_kernel[...]) + self.conv1_bias[...]
    if taps is not None:
      taps["conv1"] = x
    for i, name in enumerate(self.names):
      if i > 0:
        x = up2_bilinear(x)
      src = attrs[max(0, i - 3)]
      seg = resample.resize_bilinear(src, x.shape[1:3])
      block_taps = {} if (taps is not None and name in ("head_0", "up_3")) else None
      x = getattr(self, name)(x, seg, id_emb, block_taps)
      if taps is not None:
        taps[name] = x
        if block_taps:
          taps.update({f"{name}.norm_0/{k}": v for k, v in block_taps.items()})
    return jnp.tanh(self.conv_img(lrelu(x)))


class MetaPortraitGenerator(nnx.Module):
  """OcclusionAwareSPADEGenerator(hasid=True, use_SN=True) of the eval config, NHWC."""

  def __init__(self, rngs: nnx.Rngs, cfg: BaseConfig = BaseConfig()):
    self.ladder_network = LadderEncoder(cfg, rngs)
    self.dense_motion_network = DenseMotionNetwork(cfg, rngs)
    self.feature_encoder = Hourglass(3, cfg.block_expansion, cfg.max_features, 3, 0, "instance",
                                     False, 0, rngs)
    self.fuse_high_res = conv(cfg.block_expansion + 3, cfg.block_expansion, 3, rngs)
    self.SPDAE_G = SPADEGenerator(cfg, rngs)

  def warp(self, source: Array, source_line: Array, driving_line: Array) -> dict:
    """Stage "Warp". All [B, 256, 256, 3] in [0, 1]."""
    x = jnp.concatenate([source, source_line, driving_line], axis=-1)
    style = self.ladder_network(x)
    out = self.dense_motion_network(x, style)
    out["ladder_style"] = style
    out["deformed"] = deform(source, out["deformation"])
    return out

  def source_features(self, source: Array, taps: dict | None = None) -> list[Array]:
    """The source's feature pyramid (32, 64, 128, 256): the same for every driving frame."""
    _, feats = self.feature_encoder(source)
    if taps is not None:
      taps["feature_encoder"] = list(feats)
    feats[-1] = self.fuse_high_res(feats[-1])
    if taps is not None:
      taps["fused256"] = feats[-1]
    return feats

  def refine(self, source: Array, warp_out: dict, lines: Array, mouth_line: Array,
             driving_ldmk58: Array, source_id: Array, taps: dict | None = None,
             source_feats: list[Array] | None = None) -> Array:
    """Stage "Refine" -> tanh prediction [B, 256, 256, 3].

    lines: cat(source line, driving line) [B, 256, 256, 6]; mouth_line: driving line * mouth box;
    driving_ldmk58: [B, 58, 2] in [-1, 1]; source_id: [B, 256]; source_feats: precomputed
    `source_features(source)` (computed here when None).
    """
    if source_feats is None:
      source_feats = self.source_features(source, taps)
    feats = [deform(f, warp_out["deformation"]) for f in source_feats]
    occ = warp_out["occlusion_map"]
    attrs = []
    for f in feats:
      size = f.shape[1:3]
      # The official loop re-assigns the line maps, so they are resized in a chain 256 -> 32 ->
      # 64 -> 128 -> 256, while the occlusion map is resized from 256 every time.
      lines = resample.resize_bilinear(lines, size)
      mouth_line = resample.resize_bilinear(mouth_line, size)
      labels = [resample.resize_bilinear(occ, size),
                inputs.gaze_heatmaps(driving_ldmk58, *size), lines, mouth_line]
      attrs.append(jnp.concatenate([f] + labels, axis=-1))
    if taps is not None:
      taps["warped_features"] = feats
      taps["attrs"] = attrs
    spade_taps = {} if taps is not None else None
    pred = self.SPDAE_G(attrs, source_id, spade_taps)
    if taps is not None:
      taps["spade"] = spade_taps
    return pred

  def __call__(self, source, source_line, driving_line, driving_ldmk58, mouth_mask, source_id,
               taps: dict | None = None, source_feats: list[Array] | None = None) -> dict:
    """Both stages on explicit inputs: images [B, 256, 256, 3] in [0, 1], driving_ldmk58 [B, 58, 2]
    in [-1, 1], mouth_mask [B, 256, 256, 1], source_id [B, 256]. `taps` collects intermediates."""
    out = self.warp(source, source_line, driving_line)
    lines = jnp.concatenate([source_line, driving_line], axis=-1)
    out["prediction"] = self.refine(source, out, lines, driving_line * mouth_mask, driving_ldmk58,
                                    source_id, taps, source_feats)
    return out


def abstract_model(cfg: BaseConfig = BaseConfig()):
  """(graphdef, abstract state) without allocating the ~130 M parameters."""
  return nnx.split(nnx.eval_shape(lambda: MetaPortraitGenerator(nnx.Rngs(0), cfg)))


def bind(params, cfg: BaseConfig = BaseConfig()) -> MetaPortraitGenerator:
  """A model carrying `params` (pure dict, as the converter writes it)."""
  graphdef, state = abstract_model(cfg)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def load(ckpt_dir: str):
  """Converted base weights (pure dict) from a directory written by the converter."""
  params, _ = checkpointing.load_pretrained(ckpt_dir, model=MODEL_NAME)
  return params


def generate_frames(params, source: Array, source_ldmk: Array, driving_ldmk: Array,
                    source_id: Array, cfg: BaseConfig = BaseConfig()) -> Array:
  """The base model on explicit landmarks. source [B,256,256,3]; source_ldmk [B,669,2];
  driving_ldmk [B,T,669,2] (both in [0, 1]); source_id [B,256] -> tanh predictions [B,T,256,256,3].
  """
  model = bind(params, cfg)
  source_line = inputs.draw_lines(source_ldmk)
  source_feats = model.source_features(source)

  def one(ldmk):
    driving_line = inputs.draw_lines(ldmk)
    ldmk58 = inputs.select_points(ldmk)
    return model(source, source_line, driving_line, ldmk58, inputs.mouth_mask(ldmk58),
                 source_id, source_feats=source_feats)["prediction"]

  preds = jax.lax.map(one, jnp.moveaxis(driving_ldmk, 1, 0))
  return jnp.moveaxis(preds, 0, 1)


def _load_array(path: str, what: str, size: int | None = None, shape=None) -> np.ndarray:
  if not path:
    raise ValueError(f"config.backbone.{what} is empty: MetaPortrait needs it (see the module doc)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.backbone.{what}: {path!r} does not exist")
  arr = np.asarray(np.load(path), np.float32)
  if shape is not None:
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.shape != shape:
      raise ValueError(f"config.backbone.{what}: {path!r} holds {arr.shape}, expected {shape}")
  if size is not None:
    if arr.size != size:
      raise ValueError(f"config.backbone.{what}: {path!r} holds {arr.size} values, expected {size}")
    arr = arr.reshape(size)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"config.backbone.{what}: {path!r} contains NaN or inf")
  return arr


def driving_landmarks(params, flow, driving: Array, driving_ref: Array) -> Array:
  """The source's landmarks for every driving frame: [B, T, 669, 2] in [0, 1].

  source landmarks + (frame-0 landmarks moved along the flow driving_ref -> driving[:, t]
  - frame-0 landmarks): the driver's motion, relative, transferred onto the source's layout.
  """
  b = driving.shape[0]
  drv0 = jnp.broadcast_to(params["driving_ldmk0"], (b,) + params["driving_ldmk0"].shape)
  src = jnp.broadcast_to(params["source_ldmk"], drv0.shape)
  tracked = inputs.landmarks_along_flow(
      dataclasses.replace(flow, params=params["flow"]), driving_ref, driving, drv0)
  return src[:, None] + (tracked - drv0[:, None])


def make_animate(sr: bool, flow, cfg: BaseConfig = BaseConfig()):
  """animate(params, source, driving, driving_ref) of the interface; see the module doc.

  params: {"base", "flow", "source_ldmk" [669, 2], "driving_ldmk0" [669, 2], "source_id" [256],
  and "sr" when `sr`}. Returns [B, T, 256, 256, 3], or [B, T, 512, 512, 3] with SR.
  """
  def animate(params, source: Array, driving: Array, driving_ref: Array) -> Array:
    b = driving.shape[0]
    if source.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or driving.shape[2:] != source.shape[1:]:
      raise ValueError(f"MetaPortrait works at {IMAGE_SIZE}x{IMAGE_SIZE}: got source "
                       f"{source.shape} and driving {driving.shape}")
    moved = driving_landmarks(params, flow, driving, driving_ref)
    src = jnp.broadcast_to(params["source_ldmk"], (b,) + params["source_ldmk"].shape)
    ids = jnp.broadcast_to(params["source_id"], (b, ID_DIM))
    pred = generate_frames(params["base"], source, src, moved, ids, cfg)
    frames = jnp.clip(pred, 0.0, 1.0)
    if sr:
      from magplus_jax.models.backbones import metaportrait_sr  # pylint: disable=g-import-not-at-top
      frames = metaportrait_sr.enhance_video(params["sr"], frames)
    return frames
  return animate


def build(backbone_config, flow) -> Backbone:
  """Backbone "metaportrait". Fields: checkpoint, sr_checkpoint (optional), landmarks,
  driving_landmarks (optional), id_embedding, image_size (256)."""
  if flow is None:
    raise ValueError("MetaPortrait is driven by landmarks moved along optical flow: build() needs "
                     "the FlowEstimator (config.flow)")
  size = int(backbone_config.get("image_size", IMAGE_SIZE))
  if size != IMAGE_SIZE:
    raise ValueError(f"config.backbone.image_size={size}: MetaPortrait's base model works at 256")
  src = _load_array(backbone_config.get("landmarks", ""), "landmarks",
                    shape=(inputs.NUM_LANDMARKS, 2))
  drv_path = backbone_config.get("driving_landmarks", "")
  drv = _load_array(drv_path, "driving_landmarks", shape=(inputs.NUM_LANDMARKS, 2)) if drv_path \
      else src
  ident = _load_array(backbone_config.get("id_embedding", ""), "id_embedding", size=ID_DIM)
  params = {"base": load(backbone_config.checkpoint), "flow": flow.params,
            "source_ldmk": src, "driving_ldmk0": drv, "source_id": ident}
  sr_dir = backbone_config.get("sr_checkpoint", "")
  if sr_dir:
    from magplus_jax.models.backbones import metaportrait_sr  # pylint: disable=g-import-not-at-top
    params["sr"] = metaportrait_sr.load(sr_dir)
  return Backbone(name="metaportrait", params=params, animate=make_animate(bool(sr_dir), flow),
                  image_size=IMAGE_SIZE)
