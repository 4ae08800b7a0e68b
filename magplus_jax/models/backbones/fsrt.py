"""FSRT (Rochow et al., CVPR 2024: Facial Scene Representation Transformer) as a frozen backbone.

A Flax port of andrerochow/fsrt: the FOMM-style keypoint detector (keypoints.py, no jacobian), the
expression encoder, the set-latent encoder (conv blocks + self-attention transformer over the
source) and the pixel decoder (cross-attention from per-pixel queries into the source tokens, then
an MLP to RGB). Eval mode only. Configured by the official `runs/vox256/vox256.yaml` `model`
section plus the KPDetector arguments; weights come from `python -m magplus_jax.ports.fsrt`.

Numerics reproduced from the official code (they matter at the 1e-3 level):
  * positional-encoding arguments are formed in float32 as coords * (2**octave * float32(pi)); at
    the high pixel octaves the exact values would be sin 0 / cos +-1, the float32 noise is part of
    what the trained network saw;
  * encodings are concatenated keypoints first, then pixels; the expression vector is appended;
  * LayerNorm (eps 1e-5) normalises only the queries of the cross-attention, the source tokens
    enter `to_kv` as they are; the encoder transformer has no final norm; GELU is the exact (erf)
    form;
  * the pixel grid is the demo's pixel centres, x = (col + 0.5 - W/2) / (W/2) (the demo divides x
    by H and y by W, which is the same for its square images).

Rendering decodes every pixel of every frame inside one jit: frames one after another, pixels in
chunks of `decoder_chunk` (lax.map), so memory is bounded by one chunk's attention logits
(12 heads x chunk x 1024 tokens x 4 bytes: 200 MB for 4096 pixels). The source tokens' key/value
projections are computed once per source instead of once per chunk as the official loop does.

Driving (backbone `animate`): the official demo's default drives with the driving frame's absolute
keypoints (`relative=False`), which ignores `driving_ref`; `relative=True` moves the source
keypoints by the displacement from the reference frame (optionally scaled by the keypoint hull
areas, `adapt_movement_scale`), exactly like FOMM's transfer. The expression always comes from the
driving frame, as in the demo.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.checkpointing import load_pretrained
from magplus_jax.models.backbones import Backbone
from magplus_jax.models.backbones.fomm import check_inputs, normalize_kp
from magplus_jax.models.backbones.keypoints import KPDetector

Array = jax.Array

# runs/vox256/vox256.yaml `model`, plus the KPDetector() defaults the demo uses.
VOX256_CONFIG = {
    "encoder_kwargs": {"pix_octaves": 16, "pix_start_octave": -1, "kp_octaves": 4,
                       "kp_start_octave": -1, "encode_with_expression": True},
    "decoder_kwargs": {"pix_octaves": 16, "pix_start_octave": -1, "kp_octaves": 4,
                       "kp_start_octave": -1},
    "small_decoder": False,
    "expression_size": 256,
    "kp_detector_params": {"block_expansion": 32, "num_kp": 10, "num_channels": 3,
                           "max_features": 1024, "num_blocks": 5, "temperature": 0.1,
                           "scale_factor": 0.25, "pad": 0},
}


def positional_encoding(coords: Array, num_octaves: int, start_octave: int) -> Array:
  """[..., D] -> [..., 2*D*num_octaves]: sin then cos, index d * num_octaves + octave."""
  mult = (np.float32(2.0) ** np.arange(start_octave, start_octave + num_octaves,
                                       dtype=np.float32)) * np.float32(np.pi)
  scaled = coords.astype(jnp.float32)[..., None] * jnp.asarray(mult)
  scaled = scaled.reshape(coords.shape[:-1] + (coords.shape[-1] * num_octaves,))
  return jnp.concatenate([jnp.sin(scaled), jnp.cos(scaled)], axis=-1)


def pixel_centres(h: int, w: int) -> Array:
  """[h*w, 2] (x, y) pixel centres in (-1, 1), row-major (the demo's decoding order)."""
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5 - w / 2.0) / (w / 2.0)
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5 - h / 2.0) / (h / 2.0)
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return jnp.stack([xx, yy], axis=-1).reshape(h * w, 2)


def _linear(i: int, o: int, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
  return nnx.Linear(i, o, use_bias=bias, rngs=rngs)


def _layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as torch computes it.
  return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head attention without q/k/v biases; self-attention when kv_dim is None."""

  def __init__(self, dim: int, heads: int, dim_head: int, kv_dim: int | None = None,
               *, rngs: nnx.Rngs):
    inner = heads * dim_head
    self.heads, self.dim_head = heads, dim_head
    if kv_dim is None:
      self.to_qkv = _linear(dim, 3 * inner, rngs, bias=False)
      self.to_q = self.to_kv = None
    else:
      self.to_qkv = None
      self.to_q = _linear(dim, inner, rngs, bias=False)
      self.to_kv = _linear(kv_dim, 2 * inner, rngs, bias=False)
    self.to_out = _linear(inner, dim, rngs)

  def _heads(self, x: Array) -> Array:
    return x.reshape(x.shape[:-1] + (self.heads, self.dim_head))

  def project_kv(self, z: Array) -> tuple[Array, Array]:
    """Cross-attention keys and values of z [..., M, kv_dim] -> 2 x [..., M, heads, dim_head]."""
    k, v = jnp.split(self.to_kv(z), 2, axis=-1)
    return self._heads(k), self._heads(v)

  def __call__(self, x: Array, kv: tuple[Array, Array] | None = None) -> Array:
    """x [B, N, dim] (or [N, dim]); kv from project_kv for cross-attention."""
    if kv is None:
      q, k, v = (self._heads(t) for t in jnp.split(self.to_qkv(x), 3, axis=-1))
    else:
      q, (k, v) = self._heads(self.to_q(x)), kv
    out = jax.nn.dot_product_attention(q, k, v, scale=self.dim_head ** -0.5)
    return self.to_out(out.reshape(out.shape[:-2] + (-1,)))


class FeedForward(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, rngs)
    self.fc2 = _linear(hidden, dim, rngs)

  def __call__(self, x: Array) -> Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class TransformerBlock(nnx.Module):
  """Pre-norm residual block; in cross-attention only the queries are normalised."""

  def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int,
               kv_dim: int | None = None, *, rngs: nnx.Rngs):
    self.attn_norm = _layer_norm(dim, rngs)
    self.attn = Attention(dim, heads, dim_head, kv_dim, rngs=rngs)
    self.ff_norm = _layer_norm(dim, rngs)
    self.ff = FeedForward(dim, mlp_dim, rngs=rngs)

  def __call__(self, x: Array, kv: tuple[Array, Array] | None = None) -> Array:
    x = self.attn(self.attn_norm(x), kv) + x
    return self.ff(self.ff_norm(x)) + x


class Transformer(nnx.Module):
  def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
               kv_dim: int | None = None, *, rngs: nnx.Rngs):
    self.layers = nnx.List([TransformerBlock(dim, heads, dim_head, mlp_dim, kv_dim, rngs=rngs)
                            for _ in range(depth)])

  def project_kv(self, z: Array) -> list[tuple[Array, Array]]:
    return [layer.attn.project_kv(z) for layer in self.layers]

  def __call__(self, x: Array, kvs: list | None = None) -> Array:
    for i, layer in enumerate(self.layers):
      x = layer(x, None if kvs is None else kvs[i])
    return x


class ExpressionEncoder(nnx.Module):
  """Per-keypoint features pooled by each keypoint's heatmap, then an MLP to the latent."""

  def __init__(self, in_channels: int = 32, num_kp: int = 10, expression_size_per_kp: int = 32,
               expression_size: int = 256, pad: int = 0, *, rngs: nnx.Rngs):
    self.num_kp, self.per_kp = num_kp, expression_size_per_kp
    self.expression = nnx.Conv(in_channels, num_kp * expression_size_per_kp, (7, 7),
                               padding=[(pad, pad), (pad, pad)], rngs=rngs)
    widths = [num_kp * expression_size_per_kp, 640, 1280, 640, expression_size]
    self.expression_mlp = nnx.List([_linear(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])

  def __call__(self, feature_map: Array, heatmap: Array) -> Array:
    """feature_map [B, H, W, C], heatmap [B, h, w, K] -> expression [B, expression_size]."""
    feat = self.expression(feature_map)
    b, h, w, _ = feat.shape
    feat = feat.reshape(b, h, w, self.num_kp, self.per_kp)
    x = jnp.sum(heatmap[..., None] * feat, axis=(1, 2)).reshape(b, -1)  # kp-major
    for i, layer in enumerate(self.expression_mlp):
      x = layer(x)
      if i < len(self.expression_mlp) - 1:
        x = jax.nn.relu(x)
    return x


class SRTConvBlock(nnx.Module):
  def __init__(self, idim: int, hdim: int | None = None, odim: int | None = None,
               *, rngs: nnx.Rngs):
    hdim = hdim or idim
    odim = odim or 2 * hdim
    pad = [(1, 1), (1, 1)]
    self.conv1 = nnx.Conv(idim, hdim, (3, 3), padding=pad, use_bias=False, rngs=rngs)
    self.conv2 = nnx.Conv(hdim, odim, (3, 3), strides=2, padding=pad, use_bias=False, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))


class Encoder(nnx.Module):
  """Source images -> set-latent tokens (OSRT's improved SRT encoder, FSRT inputs)."""

  def __init__(self, num_conv_blocks: int = 3, num_att_blocks: int = 5, pix_octaves: int = 16,
               pix_start_octave: int = -1, num_kp: int = 10, expression_size: int = 256,
               encode_with_expression: bool = True, kp_octaves: int = 4,
               kp_start_octave: int = -1, *, rngs: nnx.Rngs):
    self.pix_pe = (pix_octaves, pix_start_octave)
    self.kp_pe = (kp_octaves, kp_start_octave)
    self.encode_with_expression = encode_with_expression
    in_dim = 3 + 4 * pix_octaves + 4 * num_kp * kp_octaves + (
        expression_size if encode_with_expression else 0)
    blocks = [SRTConvBlock(in_dim, hdim=96, rngs=rngs)]
    width = 192
    for _ in range(1, num_conv_blocks):
      blocks.append(SRTConvBlock(width, rngs=rngs))
      width *= 2
    self.conv_blocks = nnx.List(blocks)
    self.per_patch_linear = nnx.Conv(width, 768, (1, 1), rngs=rngs)
    self.transformer = Transformer(768, num_att_blocks, heads=12, dim_head=64, mlp_dim=1536,
                                   rngs=rngs)

  def encoder_input(self, images: Array, keypoints: Array, expression: Array | None) -> Array:
    """images [N, H, W, 3], keypoints [N, K, 2], expression [N, E] -> [N, H, W, C_in]."""
    n, h, w, _ = images.shape
    kp_enc = positional_encoding(keypoints.reshape(n, -1), *self.kp_pe)
    pix_enc = positional_encoding(pixel_centres(h, w), *self.pix_pe).reshape(h, w, -1)
    parts = [images, jnp.broadcast_to(kp_enc[:, None, None], (n, h, w, kp_enc.shape[-1])),
             jnp.broadcast_to(pix_enc[None], (n, h, w, pix_enc.shape[-1]))]
    if expression is not None and self.encode_with_expression:
      parts.append(jnp.broadcast_to(expression[:, None, None], (n, h, w, expression.shape[-1])))
    return jnp.concatenate(parts, axis=-1)

  def patch_tokens(self, x: Array) -> Array:
    """Encoder input [N, H, W, C_in] -> tokens before the transformer [N, h*w, 768], row-major."""
    for block in self.conv_blocks:
      x = block(x)
    x = self.per_patch_linear(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])

  def __call__(self, images: Array, keypoints: Array, expression: Array | None = None) -> Array:
    """images [B, S, H, W, 3], keypoints [B, S, K, 2], expression [B, S, E] -> [B, S*h*w, 768]."""
    b, s = images.shape[:2]
    flat = lambda a: None if a is None else a.reshape((b * s,) + a.shape[2:])
    tokens = self.patch_tokens(self.encoder_input(flat(images), flat(keypoints), flat(expression)))
    return self.transformer(tokens.reshape(b, -1, tokens.shape[-1]))


class Decoder(nnx.Module):
  """Per-pixel queries (keypoints, pixel, expression encodings) attend to the source tokens."""

  def __init__(self, num_att_blocks: int = 2, pix_octaves: int = 16, pix_start_octave: int = -1,
               num_kp: int = 10, kp_octaves: int = 4, kp_start_octave: int = -1,
               expression_size: int = 0, small: bool = False, z_dim: int = 768,
               *, rngs: nnx.Rngs):
    self.pix_pe = (pix_octaves, pix_start_octave)
    self.kp_pe = (kp_octaves, kp_start_octave)
    dim = 4 * pix_octaves + 4 * num_kp * kp_octaves + expression_size
    self.input_mlp = nnx.List([_linear(dim, 720, rngs), _linear(720, dim, rngs)])
    heads, mlp_dim = (6, z_dim) if small else (12, 2 * z_dim)
    self.transformer = Transformer(dim, num_att_blocks, heads=heads, dim_head=z_dim // 12,
                                   mlp_dim=mlp_dim, kv_dim=z_dim, rngs=rngs)
    widths = [dim, 1536, 768, 3] if small else [dim, 1536, 1536, 1536, 1536, 3]
    self.render_mlp = nnx.List([_linear(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])

  def queries(self, pixels: Array, keypoints: Array, expression: Array | None) -> Array:
    """pixels [N, 2], keypoints [K, 2], expression [E] -> queries [N, D] (before input_mlp)."""
    n = pixels.shape[0]
    kp_enc = positional_encoding(keypoints.reshape(-1), *self.kp_pe)
    parts = [jnp.broadcast_to(kp_enc, (n, kp_enc.shape[-1])),
             positional_encoding(pixels, *self.pix_pe)]
    if expression is not None:
      parts.append(jnp.broadcast_to(expression, (n, expression.shape[-1])))
    return jnp.concatenate(parts, axis=-1)

  def render_queries(self, queries: Array, kvs: list) -> tuple[Array, Array]:
    """queries [N, D], kvs from transformer.project_kv -> (rgb [N, 3] raw, render-MLP input)."""
    x = self.input_mlp[1](jax.nn.relu(self.input_mlp[0](queries)))
    x = self.transformer(x, kvs)
    features = x
    for i, layer in enumerate(self.render_mlp):
      x = layer(x)
      if i < len(self.render_mlp) - 1:
        x = jax.nn.relu(x)
    return x, features

  def __call__(self, z: Array, pixels: Array, keypoints: Array, expression: Array | None,
               chunk: int = 4096) -> Array:
    """One frame: z [M, 768], pixels [N, 2], keypoints [K, 2], expression [E] -> rgb [N, 3].

    Pixels are decoded `chunk` at a time (the last chunk padded), sequentially under lax.map.
    """
    kvs = self.transformer.project_kv(z)
    n = pixels.shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    padded = jnp.pad(pixels, ((0, n_chunks * chunk - n), (0, 0)))

    def one(pix):
      return self.render_queries(self.queries(pix, keypoints, expression), kvs)[0]

    rgb = jax.lax.map(one, padded.reshape(n_chunks, chunk, 2))
    return rgb.reshape(n_chunks * chunk, -1)[:n]


class FSRT(nnx.Module):
  """Keypoint detector + expression encoder + encoder + decoder, from an FSRT config dict."""

  def __init__(self, config: dict, *, rngs: nnx.Rngs):
    kp_params = dict(config["kp_detector_params"])
    num_kp = kp_params["num_kp"]
    self.kp_detector = KPDetector(**kp_params, estimate_jacobian=False, rngs=rngs)
    self.expression_encoder = ExpressionEncoder(
        in_channels=self.kp_detector.predictor.out_filters, num_kp=num_kp,
        expression_size=config["expression_size"], rngs=rngs)
    self.encoder = Encoder(num_kp=num_kp, expression_size=config["expression_size"], rngs=rngs,
                           **config["encoder_kwargs"])
    self.decoder = Decoder(num_kp=num_kp, expression_size=config["expression_size"],
                           small=bool(config.get("small_decoder", False)), rngs=rngs,
                           **config["decoder_kwargs"])
    # The encoder's conv blocks halve the size once each.
    self.size_multiple = math.lcm(self.kp_detector.size_multiple,
                                  2 ** len(self.encoder.conv_blocks))

  def keypoints_and_expression(self, images: Array) -> dict[str, Array]:
    """images [N, H, W, 3] -> value [N, K, 2], expression [N, E] (+ detector intermediates)."""
    out = self.kp_detector(images)
    out["expression"] = self.expression_encoder(out["feature_map"], out["heatmap"])
    return out

  def decode_frames(self, z: Array, keypoints: Array, expression: Array, h: int, w: int,
                    chunk: int = 4096) -> Array:
    """z [F, M, 768], keypoints [F, K, 2], expression [F, E] -> raw rgb [F, h, w, 3] (frames
    rendered one after another)."""
    pixels = pixel_centres(h, w)
    rgb = jax.lax.map(lambda a: self.decoder(a[0], pixels, a[1], a[2], chunk),
                      (z, keypoints, expression))
    return rgb.reshape(-1, h, w, rgb.shape[-1])

  def driving_signals(self, source: Array, driving: Array, driving_ref: Array, *,
                      relative: bool = False, adapt_movement_scale: bool | Array = False
                      ) -> dict[str, Array]:
    """Keypoints and expressions: of the source (kp_source [B, K, 2], expression_source [B, E])
    and those the decoder renders (kp_driving [B, T, K, 2], expression_driving [B, T, E])."""
    b, t = driving.shape[:2]
    frames = driving.reshape((b * t,) + driving.shape[2:])
    images = [source, frames] + ([driving_ref] if relative else [])
    det = self.keypoints_and_expression(jnp.concatenate(images, axis=0))
    kp_src = det["value"][:b]
    kp_drv = det["value"][b:b + b * t].reshape((b, t) + kp_src.shape[1:])
    if relative:
      kp_ref = det["value"][b + b * t:]
      kp_drv = normalize_kp({"value": kp_src}, {"value": kp_drv}, {"value": kp_ref},
                            relative=True, adapt_movement_scale=adapt_movement_scale)["value"]
    expr = det["expression"]
    return {"kp_source": kp_src, "expression_source": expr[:b], "kp_driving": kp_drv,
            "expression_driving": expr[b:b + b * t].reshape(b, t, -1)}

  def animate(self, source: Array, driving: Array, driving_ref: Array, *, relative: bool = False,
              adapt_movement_scale: bool | Array = False, chunk: int = 4096) -> tuple[Array, dict]:
    """source [B, H, W, 3], driving [B, T, H, W, 3], driving_ref [B, H, W, 3] ->
    (raw rgb [B, T, H, W, 3], driving_signals); the source is encoded once."""
    b, t, h, w = driving.shape[:4]
    sig = self.driving_signals(source, driving, driving_ref, relative=relative,
                               adapt_movement_scale=adapt_movement_scale)
    z = self.encoder(source[:, None], sig["kp_source"][:, None],
                     sig["expression_source"][:, None])  # [B, M, 768]
    rgb = self.decode_frames(jnp.repeat(z, t, axis=0),
                             sig["kp_driving"].reshape((b * t,) + sig["kp_driving"].shape[2:]),
                             sig["expression_driving"].reshape(b * t, -1), h, w, chunk)
    return rgb.reshape(b, t, h, w, -1), sig


def model_config(meta_config: dict) -> dict:
  return {k: meta_config[k] for k in VOX256_CONFIG if k in meta_config}


def abstract_model(config: dict) -> FSRT:
  return nnx.eval_shape(lambda: FSRT(config, rngs=nnx.Rngs(0)))


def from_state_dict(config: dict, state: dict) -> FSRT:
  """An FSRT module holding `state` (the pure dict the converter writes)."""
  graphdef, abstract = nnx.split(abstract_model(config))
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, nnx.restore_int_paths(state)))
  return nnx.merge(graphdef, abstract)


def load(ckpt_dir: str) -> tuple[FSRT, dict]:
  """(model, config) from a directory written by `python -m magplus_jax.ports.fsrt`."""
  state, meta = load_pretrained(ckpt_dir, model="fsrt")
  return from_state_dict(model_config(meta["config"]), state), meta["config"]


def make_animate_fn(model: FSRT, *, relative: bool = False, adapt_movement_scale: bool = False,
                    chunk: int = 4096, clamp: bool = True):
  """(animate, params): `animate(params, source, driving, driving_ref) -> [B, T, H, W, 3]`, pure
  and jitted; clamped to [0, 1] as the demo writes its video (clamp=False: the raw decoder
  output)."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def animate(params: Any, source: Array, driving: Array, driving_ref: Array) -> Array:
    check_inputs("fsrt", source, driving, driving_ref, model.size_multiple)
    m = nnx.merge(graphdef, params)
    rgb, _ = m.animate(source, driving, driving_ref, relative=relative,
                       adapt_movement_scale=adapt_movement_scale, chunk=chunk)
    return jnp.clip(rgb, 0.0, 1.0) if clamp else rgb

  return animate, params


def build(backbone_config, flow=None) -> Backbone:
  """Backbone from `config.backbone` (name="fsrt"): checkpoint (converted directory, required),
  image_size (256), relative (False: the demo's default absolute keypoints), adapt_movement_scale
  (False, the demo's default), decoder_chunk (pixels decoded at once, 4096)."""
  del flow  # FSRT drives from images directly
  ckpt = backbone_config.get("checkpoint", "")
  if not ckpt:
    raise ValueError("config.backbone.checkpoint is empty: FSRT needs converted weights; run "
                     "`python -m magplus_jax.ports.fsrt vox256.pt kp_detector.pt OUT_DIR` and set "
                     "it to OUT_DIR")
  model, config = load(ckpt)
  animate, params = make_animate_fn(
      model, relative=bool(backbone_config.get("relative", False)),
      adapt_movement_scale=bool(backbone_config.get("adapt_movement_scale", False)),
      chunk=int(backbone_config.get("decoder_chunk", 4096)))
  image_size = int(backbone_config.get("image_size", config.get("image_size", 256)))
  return Backbone(name="fsrt", params=params, animate=animate, image_size=image_size)
