"""EMOPortraits (stage 1) as a MagPlus backbone: source pass, per-frame pass, masks, `build`.

A Flax NNX port of github.com/neeek2303/EMOPortraits @ 7cb86416 (Drobyshev et al., CVPR 2024),
licensed **CC BY-NC-SA 4.0**: this port and weights converted from the release inherit it
(non-commercial use, share-alike). The model (config, 2-D networks) is in emoportraits_model.py,
the 3-D networks in emoportraits_volume.py, the head-pose net, the ResNets and the face masks in
emoportraits_helpers.py (BiSeNet face parsing in bisenet.py), the converters in
magplus_jax/ports/emoportraits.py and magplus_jax/ports/bisenet.py.

How a frame is made (all channels-last):
  source pass, once per clip:  masked source -> head pose theta_s, identity embedding, expression
    embedding, a 96 x 16 x 64 x 64 feature volume (local encoder), which is warped by inv(theta_s)
    and by the xy generator's warp into a canonical volume (then a 3-D U-Net);
  per driving frame:  driver -> theta_d (head-pose net) and expression embedding; the uv generator
    warps the canonical volume to the driver's expression, theta_d rotates it, and a 2-D decoder
    renders the 512 x 512 image.

Backbone semantics. EMOPortraits itself drives with the driver's absolute pose and expression.
The MagPlus interface passes a reference frame (`driving_ref`, the first driver frame); by default
the pose is relative, theta_t = theta_s @ inv(theta_ref) @ theta_d (the driver's head motion since
the reference, applied to the source in camera space, so a driver frame equal to the reference
reproduces the source pose) and the expression absolute (the model's own cross-identity transfer).
`pose_mode="absolute"` gives the official behaviour; `expression_mode="relative"` uses
e_s + (e_d - e_ref) instead.

Source pass once per clip: `animate` alone recomputes it on every call (it must, to stay a pure
function of its arguments; the generation pipeline calls it once per chunk). `bind_source(source,
driving_ref)` runs it once and returns a backbone whose params carry the result, so every later
`animate` call (jitted or not) only runs the per-frame part.

Backbone config fields: checkpoint (converted stage-1 dir), headpose_checkpoint, mask
("bisenet" + bisenet_checkpoint | "facebox" | "ellipse" | "none", see emoportraits_helpers),
image_size (512), pose_mode, expression_mode, chunk_size (driving frames per jitted call; 1 keeps
the 512 px per-frame peak low), dtype ("float32" | "bfloat16": the compute dtype of the heavy
volume networks and the decoder; embedders, warp generators and all coordinates stay float32,
see emoportraits_model.cast_params).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.backbones import Backbone
from magplus_jax.models.backbones.bisenet import BiSeNet
from magplus_jax.models.backbones.emoportraits_helpers import (
    HeadPoseNet, ellipse_mask, facebox_mask)
from magplus_jax.models.backbones.emoportraits_model import (  # re-exported: the model's home
    EMOPortraits, EMOPortraitsConfig, cast_params, rotation_warp)

Array = jax.Array
__all__ = ["EMOPortraits", "EMOPortraitsBackbone", "EMOPortraitsConfig", "Options", "build", "drive",
           "load", "make_animate", "prepare", "rotation_warp"]


# ----------------------------------------------------------------------------- backbone adapter

@functools.lru_cache(maxsize=None)
def abstract_modules(cfg: EMOPortraitsConfig = EMOPortraitsConfig()) -> dict:
  """{"model", "headpose", "bisenet"}: the modules built abstractly (shapes only, no weights
  drawn), once per config; their graphdefs and state shapes serve jit and the converter."""
  return dict(model=nnx.eval_shape(lambda: EMOPortraits(cfg, rngs=nnx.Rngs(0))),
              headpose=nnx.eval_shape(lambda: HeadPoseNet(rngs=nnx.Rngs(0))),
              bisenet=nnx.eval_shape(lambda: BiSeNet(rngs=nnx.Rngs(0))))


@functools.lru_cache(maxsize=None)
def graphdefs(cfg: EMOPortraitsConfig = EMOPortraitsConfig()):
  mods = abstract_modules(cfg)
  return tuple(nnx.split(mods[k])[0] for k in ("model", "headpose", "bisenet"))


@dataclasses.dataclass(frozen=True)
class Options:
  mask: str = "bisenet"
  pose_mode: str = "relative"
  expression_mode: str = "absolute"
  chunk_size: int = 1
  dtype: str = "float32"

  def __post_init__(self):
    for field, allowed in (("mask", ("bisenet", "facebox", "ellipse", "none")),
                           ("pose_mode", ("relative", "absolute")),
                           ("expression_mode", ("absolute", "relative")),
                           ("dtype", ("float32", "bfloat16"))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"config.backbone.{field}={getattr(self, field)!r}; choose one of {allowed}")
    if self.chunk_size < 1:
      raise ValueError(f"config.backbone.chunk_size={self.chunk_size} must be >= 1")


def _merge(cfg, params, dtype):
  g_model, g_hp, g_bs = graphdefs(cfg)
  model = nnx.merge(g_model, cast_params(params["model"], dtype))
  headpose = nnx.merge(g_hp, params["headpose"])   # cheap, and poses want float32
  bisenet = nnx.merge(g_bs, params["bisenet"]) if params.get("bisenet") is not None else None
  return model, headpose, bisenet


def source_mask(image: Array, mode: str, bisenet: BiSeNet | None) -> Array:
  """[B, H, W, 3] -> binary [B, H, W, 1] (see emoportraits_helpers for what each mode gives)."""
  b, h, w, _ = image.shape
  if mode == "bisenet":
    if bisenet is None:
      raise ValueError("mask='bisenet' needs BiSeNet weights: set config.backbone.bisenet_checkpoint"
                       " (or use mask='facebox' / 'ellipse' / 'none')")
    return bisenet.face_mask(image.astype(jnp.float32)).astype(image.dtype)
  if mode == "facebox":   # a host-side detector; pure_callback keeps it usable under jit
    host = lambda im: np.stack([facebox_mask(x) for x in np.asarray(im, np.float32)])[..., None]
    out = jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32)
    return jax.pure_callback(host, out, image.astype(jnp.float32)).astype(image.dtype)
  if mode == "ellipse":
    return jnp.broadcast_to(jnp.asarray(ellipse_mask(h, w), image.dtype)[None, :, :, None],
                            (b, h, w, 1))
  return jnp.ones((b, h, w, 1), image.dtype)


def compose_pose(theta_src: Array, theta_ref: Array, theta_drv: Array, mode: str) -> Array:
  """The pose [N, 4, 4] the frame is rendered with.

  "absolute": the driver's own (official). "relative": theta_src @ inv(theta_ref) @ theta_drv.
  A pose maps camera (volume) coordinates to the head's canonical ones, so the driver's head
  moved by inv(theta_drv) @ theta_ref in camera space; the same camera-space motion applied to the
  source gives this product, which equals theta_src when the driver is at its reference pose.
  """
  if mode == "absolute":
    return theta_drv
  mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  inv_ref = jnp.linalg.inv(theta_ref.astype(jnp.float32)).astype(theta_drv.dtype)
  return mm(mm(theta_src, inv_ref), theta_drv)


def prepare(params, source: Array, driving_ref: Array, mask: Array | None = None, *,
            cfg: EMOPortraitsConfig = EMOPortraitsConfig(), opts: Options = Options(),
            debug: bool = False) -> dict[str, Array]:
  """The source pass, once per clip: source, driving_ref [B, S, S, 3]; mask [B, S, S, 1] or None
  (None: computed by opts.mask). Returns the state `drive` needs (+ intermediates if debug)."""
  dtype = jnp.dtype(opts.dtype)
  model, headpose, bisenet = _merge(cfg, params, dtype)
  source = source.astype(jnp.float32)     # cast per network inside the model
  if mask is None:
    mask = source_mask(source, opts.mask, bisenet)
  masked = source * (mask > 0.6).astype(jnp.float32)
  pose = headpose(masked)
  src = model.encode_source(masked, pose["theta"])
  ref = headpose(driving_ref.astype(jnp.float32))
  state = dict(canonical=src["canonical"], idt_embed=src["idt_embed"],
               pose_embed=src["pose_embed"], theta=pose["theta"], ref_theta=ref["theta"])
  if opts.expression_mode == "relative":
    state["ref_pose_embed"] = model.expression_embedder(driving_ref.astype(jnp.float32),
                                                        ref["theta"])[0]
  if debug:
    state["debug"] = dict(src, theta=pose["theta"], mask=mask)
  return state


def drive(params, state: dict, driving: Array, *, cfg: EMOPortraitsConfig = EMOPortraitsConfig(),
          opts: Options = Options(), debug: bool = False):
  """Driving frames [B, T, S, S, 3] -> frames [B, T, S, S, 3] (all T at once: chunk outside)."""
  dtype = jnp.dtype(opts.dtype)
  model, headpose, _ = _merge(cfg, params, dtype)
  b, t = driving.shape[:2]
  frames = driving.reshape(b * t, *driving.shape[2:]).astype(jnp.float32)
  rep = lambda a: jnp.repeat(a, t, axis=0)
  pose = headpose(frames)
  pose_embed, img_align = model.expression_embedder(frames, pose["theta"])
  theta = compose_pose(rep(state["theta"]), rep(state["ref_theta"]), pose["theta"], opts.pose_mode)
  if opts.expression_mode == "relative":
    pose_embed = rep(state["pose_embed"]) + pose_embed - rep(state["ref_pose_embed"])
  out = model.drive(rep(state["canonical"]), rep(state["idt_embed"]), pose_embed, theta)
  image = out["image"].astype(jnp.float32).reshape(b, t, *driving.shape[2:])
  if not debug:
    return image
  return image, dict(out, theta=pose["theta"], scale=pose["scale"], rotation=pose["rotation"],
                     translation=pose["translation"], pose_embed=pose_embed, img_align=img_align)


@dataclasses.dataclass(frozen=True)
class EMOPortraitsBackbone(Backbone):
  """The Backbone plus the two stages, for callers that stream long clips themselves."""
  prepare: Any = None   # jitted (params, source, driving_ref[, mask]) -> state
  drive: Any = None     # jitted (params, state, driving chunk [B, c, S, S, 3]) -> frames

  def bind_source(self, source: Array, driving_ref: Array,
                  mask: Array | None = None) -> "EMOPortraitsBackbone":
    """Runs the source pass once (source, driving_ref [B, S, S, 3]; mask [B, S, S, 1] or None for
    the configured one) and returns this backbone with the result in its params: its `animate`
    then skips the source pass and ignores its own `source` / `driving_ref` arguments, which must
    be the ones bound here."""
    state = self.prepare(self.params, source, driving_ref, mask)
    params = {k: v for k, v in self.params.items() if k != "source_state"}
    return dataclasses.replace(self, params=dict(params, source_state=state))


def make_animate(cfg: EMOPortraitsConfig, opts: Options):
  """(animate, prepare_jit, drive_jit). animate streams frames in chunks of opts.chunk_size."""
  prep = jax.jit(functools.partial(prepare, cfg=cfg, opts=opts))
  drv = jax.jit(functools.partial(drive, cfg=cfg, opts=opts))
  c = opts.chunk_size

  def animate(params, source, driving, driving_ref):
    s = cfg.image_size
    for name, a, nd in (("source", source, 4), ("driving", driving, 5),
                        ("driving_ref", driving_ref, 4)):
      if a.ndim != nd or tuple(a.shape[-3:]) != (s, s, 3):
        raise ValueError(f"EMOPortraits: {name} has shape {tuple(a.shape)}; it works on "
                         f"{s}x{s} RGB crops ([B, {s}, {s}, 3], driving [B, T, {s}, {s}, 3])")
    t = driving.shape[1]
    state = params.get("source_state")
    params = {k: v for k, v in params.items() if k != "source_state"}
    if state is not None and state["canonical"].shape[0] != driving.shape[0]:
      raise ValueError(f"EMOPortraits: the bound source has batch {state['canonical'].shape[0]}, "
                       f"driving has {driving.shape[0]}")
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves((params, state, source, driving))):
      if state is None:
        state = prepare(params, source, driving_ref, cfg=cfg, opts=opts)
      step = lambda f: drive(params, state, f[:, None], cfg=cfg, opts=opts)[:, 0]
      out = jax.lax.map(step, jnp.moveaxis(driving, 1, 0), batch_size=min(c, t))
      return jnp.moveaxis(out, 0, 1)
    if state is None:
      state = prep(params, source, driving_ref)
    outs = []
    for t0 in range(0, t, c):
      chunk = driving[:, t0:t0 + c]
      n = chunk.shape[1]
      if n < c:   # pad the tail so every call reuses one compiled function
        chunk = jnp.concatenate([chunk, jnp.repeat(chunk[:, -1:], c - n, axis=1)], axis=1)
      outs.append(drv(params, state, chunk)[:, :n])
    return jnp.concatenate(outs, axis=1)

  return animate, prep, drv


def load(ckpt_dir: str, headpose_dir: str | None = None, bisenet_dir: str | None = None):
  """Converted checkpoints -> (params {"model", "headpose", "bisenet"}, EMOPortraitsConfig)."""
  from magplus_jax.checkpointing import load_pretrained  # pylint: disable=g-import-not-at-top
  model, meta = load_pretrained(ckpt_dir, model="emoportraits")
  cfg = EMOPortraitsConfig(**meta.get("config", {}).get("architecture", {}))
  params = dict(model=nnx.restore_int_paths(model), headpose=None, bisenet=None)
  if headpose_dir:
    params["headpose"] = nnx.restore_int_paths(
        load_pretrained(headpose_dir, model="emoportraits_headpose")[0])
  if bisenet_dir:
    params["bisenet"] = nnx.restore_int_paths(
        load_pretrained(bisenet_dir, model="bisenet_faceparsing")[0])
  return params, cfg


def build(backbone_config, flow=None) -> EMOPortraitsBackbone:
  """config.backbone -> Backbone (the flow estimator is not needed: the driver is an image)."""
  del flow
  get = lambda k, d=None: backbone_config.get(k, d) if hasattr(backbone_config, "get") else getattr(
      backbone_config, k, d)
  opts = Options(mask=get("mask", "bisenet"), pose_mode=get("pose_mode", "relative"),
                 expression_mode=get("expression_mode", "absolute"),
                 chunk_size=int(get("chunk_size", 1)), dtype=get("dtype", "float32"))
  if not get("checkpoint"):
    raise ValueError("config.backbone.checkpoint: EMOPortraits needs converted weights "
                     "(python -m magplus_jax.ports.emoportraits ...)")
  if not get("headpose_checkpoint"):
    raise ValueError("config.backbone.headpose_checkpoint: EMOPortraits needs the head-pose net "
                     "(repos/head_pose_regressor.pth, converted with python -m "
                     "magplus_jax.ports.emoportraits --kind headpose)")
  bisenet_dir = get("bisenet_checkpoint") if opts.mask == "bisenet" else None
  if opts.mask == "bisenet" and not bisenet_dir:
    raise ValueError("config.backbone.mask='bisenet' needs config.backbone.bisenet_checkpoint "
                     "(79999_iter.pth converted with python -m magplus_jax.ports.bisenet), or "
                     "mask='facebox' / 'ellipse' / 'none'")
  params, cfg = load(get("checkpoint"), get("headpose_checkpoint"), bisenet_dir)
  size = int(get("image_size", cfg.image_size))
  if size != cfg.image_size:
    raise ValueError(f"config.backbone.image_size={size}, but the checkpoint is {cfg.image_size} px")
  params = jax.tree.map(jnp.asarray, params)
  if opts.dtype != "float32":   # cast the heavy networks once, not inside every call
    params["model"] = cast_params(params["model"], opts.dtype)
  animate, prep, drv = make_animate(cfg, opts)
  return EMOPortraitsBackbone(name="emoportraits", params=params, animate=animate,
                              image_size=cfg.image_size, prepare=prep, drive=drv)
