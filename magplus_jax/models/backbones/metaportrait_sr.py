"""MetaPortrait's temporal super-resolution, 256 -> 512 (`GFPGANv1Clean_UnetWindow`), Flax NNX, NHWC.

Configured as `sr_model/options/test/same_id_demo.yml`: out_size 512, channel multiplier 2, narrow 1,
`different_w` (16 latents from the encoder, fed straight to the decoder: `input_is_latent`),
`sft_half`, zero noise, `unet_window` temporal fusion.

A clip's frames are the batch axis. The U-Net encoder and decoder apply, after every resolution
block, a temporal window: f_t + conv(lrelu(conv(cat[f_{t-1}, f_t, f_{t+1}]))) with the edge frames
replicated, so neighbouring frames change each other's output. The official test feeds clips in
segments of 16 frames (`temp_psz`), which `enhance_video` reproduces (windows never cross a
segment boundary). The StyleGAN2 decoder's constant input is modulated by the latents; after the
upsampling conv of every level the second half of its channels gets the U-Net's SFT
`x * scale + shift`. Parts that do not run at inference (the style MLP, the noise buffers, the
U-Net's unused toRGB heads) are not part of this model; the converter checks and drops them.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from magplus_jax import checkpointing
from magplus_jax.models import resample
from magplus_jax.models.backbones.metaportrait_layers import conv, lrelu

Array = jax.Array
MODEL_NAME = "metaportrait_sr"
OUT_SIZE = 512
STYLE_DIM = 512
SEGMENT = 16          # val.temp_psz
LOG_SIZE = int(math.log2(OUT_SIZE))
NUM_LATENT = 2 * LOG_SIZE - 2


def unet_channels(res: int) -> int:
  return {4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32}[res]


def style_channels(res: int) -> int:
  return {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}[res]


def _resize(x: Array, factor: float) -> Array:
  return resample.resize_bilinear(x, (int(x.shape[1] * factor), int(x.shape[2] * factor)))


class ResBlock(nnx.Module):
  """conv-lrelu, bilinear rescale, conv-lrelu, plus a rescaled 1x1 skip."""

  def __init__(self, cin: int, cout: int, factor: float, rngs: nnx.Rngs):
    self.conv1 = conv(cin, cin, 3, rngs)
    self.conv2 = conv(cin, cout, 3, rngs)
    self.skip = conv(cin, cout, 1, rngs, bias=False)
    self.factor = factor

  def __call__(self, x: Array) -> Array:
    out = _resize(lrelu(self.conv1(x)), self.factor)
    out = lrelu(self.conv2(out))
    return out + self.skip(_resize(x, self.factor))


class TemporalWindow(nnx.Module):
  """The residual a frame receives from itself and its two neighbours (edges replicated)."""

  def __init__(self, c: int, rngs: nnx.Rngs):
    self.conv1 = conv(3 * c, 3 * c, 3, rngs)
    self.conv2 = conv(3 * c, c, 3, rngs)

  def __call__(self, x: Array) -> Array:
    prev = jnp.concatenate([x[:1], x[:-1]], axis=0)
    nxt = jnp.concatenate([x[1:], x[-1:]], axis=0)
    return self.conv2(lrelu(self.conv1(jnp.concatenate([prev, x, nxt], axis=-1))))


class ModulatedConv(nnx.Module):
  """StyleGAN2 modulated conv: weight * style(in), optionally demodulated per output channel.

  Modulating the input instead of the weight (x * s, then conv, then * demod) is the same linear
  map and runs as one ordinary batched conv.
  """

  def __init__(self, cin: int, cout: int, k: int, demodulate: bool, rngs: nnx.Rngs):
    self.kernel = nnx.Param(jnp.zeros((k, k, cin, cout), jnp.float32))
    self.modulation = nnx.Linear(STYLE_DIM, cin, rngs=rngs)
    self.demodulate = demodulate

  def __call__(self, x: Array, latent: Array) -> Array:
    s = self.modulation(latent)                                         # [B, cin]
    w = self.kernel[...]
    p = w.shape[0] // 2
    out = jax.lax.conv_general_dilated(x * s[:, None, None, :], w, (1, 1), ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.demodulate:
      wsq = jnp.sum(jnp.square(w), axis=(0, 1))                          # [cin, cout]
      out = out * jax.lax.rsqrt(jnp.square(s) @ wsq + 1e-8)[:, None, None, :]
    return out


class StyleConv(nnx.Module):
  def __init__(self, cin: int, cout: int, upsample: bool, rngs: nnx.Rngs):
    self.modulated_conv = ModulatedConv(cin, cout, 3, True, rngs)
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
    self.upsample = upsample

  def __call__(self, x: Array, latent: Array) -> Array:
    if self.upsample:
      x = _resize(x, 2)
    return lrelu(self.modulated_conv(x, latent) * 2 ** 0.5 + self.bias[...])   # noise is zero


class ToRGB(nnx.Module):
  def __init__(self, cin: int, rngs: nnx.Rngs):
    self.modulated_conv = ModulatedConv(cin, 3, 1, False, rngs)
    self.bias = nnx.Param(jnp.zeros((3,), jnp.float32))

  def __call__(self, x: Array, latent: Array, skip: Array | None) -> Array:
    out = self.modulated_conv(x, latent) + self.bias[...]
    return out if skip is None else out + _resize(skip, 2)


class SFTCondition(nnx.Module):
  def __init__(self, c: int, rngs: nnx.Rngs):
    self.conv1 = conv(c, c, 3, rngs)
    self.conv2 = conv(c, c, 3, rngs)

  def __call__(self, x: Array) -> Array:
    return self.conv2(lrelu(self.conv1(x)))


class StyleGANDecoder(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.constant_input = nnx.Param(jnp.zeros((4, 4, style_channels(4)), jnp.float32))
    self.style_conv1 = StyleConv(style_channels(4), style_channels(4), False, rngs)
    self.to_rgb1 = ToRGB(style_channels(4), rngs)
    for level, log in enumerate(range(3, LOG_SIZE + 1)):
      cin, cout = style_channels(2 ** (log - 1)), style_channels(2 ** log)
      setattr(self, f"conv_up{level}", StyleConv(cin, cout, True, rngs))
      setattr(self, f"conv{level}", StyleConv(cout, cout, False, rngs))
      setattr(self, f"rgb{level}", ToRGB(cout, rngs))

  def __call__(self, latent: Array, conditions: list[tuple[Array, Array]],
               taps: dict | None = None) -> Array:
    n = latent.shape[0]
    x = jnp.broadcast_to(self.constant_input[...], (n,) + self.constant_input.shape)
    x = self.style_conv1(x, latent[:, 0])
    skip = self.to_rgb1(x, latent[:, 1], None)
    for level in range(LOG_SIZE - 2):
      if taps is not None:
        taps[f"rgb_skip{skip.shape[1]}"] = skip
      x = getattr(self, f"conv_up{level}")(x, latent[:, 2 * level + 1])
      scale, shift = conditions[level]
      half = x.shape[-1] // 2
      x = jnp.concatenate([x[..., :half], x[..., half:] * scale + shift], axis=-1)
      x = getattr(self, f"conv{level}")(x, latent[:, 2 * level + 2])
      skip = getattr(self, f"rgb{level}")(x, latent[:, 2 * level + 3], skip)
    return skip


class TemporalGFPGAN(nnx.Module):
  """GFPGANv1Clean_UnetWindow of the demo config."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv_body_first = conv(3, unet_channels(OUT_SIZE), 1, rngs)
    cin = unet_channels(OUT_SIZE)
    self.depth = LOG_SIZE - 2
    for i, log in enumerate(range(LOG_SIZE, 2, -1)):
      cout = unet_channels(2 ** (log - 1))
      setattr(self, f"down{i}", ResBlock(cin, cout, 0.5, rngs))
      setattr(self, f"window_down{i}", TemporalWindow(cout, rngs))
      cin = cout
    self.final_conv = conv(cin, unet_channels(4), 3, rngs)
    self.final_linear = nnx.Linear(unet_channels(4) * 16, NUM_LATENT * STYLE_DIM, rngs=rngs)
    cin = unet_channels(4)
    for i, log in enumerate(range(3, LOG_SIZE + 1)):
      cout = unet_channels(2 ** log)
      setattr(self, f"up{i}", ResBlock(cin, cout, 2.0, rngs))
      setattr(self, f"window_up{i}", TemporalWindow(cout, rngs))
      setattr(self, f"condition_scale{i}", SFTCondition(cout, rngs))
      setattr(self, f"condition_shift{i}", SFTCondition(cout, rngs))
      cin = cout
    self.stylegan_decoder = StyleGANDecoder(rngs)

  def __call__(self, clip: Array, taps: dict | None = None) -> Array:
    """clip: [n, 256, 256, 3] in [0, 1] (one clip, frames as batch) -> [n, 512, 512, 3]."""
    x = clip * 2.0 - 1.0
    if x.shape[1] != OUT_SIZE:
      x = _resize(x, 2)
    feat = lrelu(self.conv_body_first(x))
    skips = []
    for i in range(self.depth):
      feat = getattr(self, f"down{i}")(feat)
      inc = getattr(self, f"window_down{i}")(feat)
      feat = feat + inc
      skips.insert(0, feat)
      if taps is not None:
        taps[f"encoder/skip{feat.shape[1]}"] = feat
        taps[f"encoder/window_increment{feat.shape[1]}"] = inc
    pre = self.final_conv(feat)
    feat = lrelu(pre)
    flat = jnp.transpose(feat, (0, 3, 1, 2)).reshape(feat.shape[0], -1)  # NCHW flatten
    style = self.final_linear(flat)
    latent = style.reshape(style.shape[0], NUM_LATENT, STYLE_DIM)
    conditions = []
    for i in range(self.depth):
      feat = getattr(self, f"up{i}")(feat + skips[i])
      inc = getattr(self, f"window_up{i}")(feat)
      feat = feat + inc
      scale = getattr(self, f"condition_scale{i}")(feat)
      shift = getattr(self, f"condition_shift{i}")(feat)
      conditions.append((scale, shift))
      if taps is not None:
        r = feat.shape[1]
        taps[f"decoder/window_increment{r}"] = inc
        taps[f"conditions/scale{r}"] = scale
        taps[f"conditions/shift{r}"] = shift
    if taps is not None:
      taps.update({"final_conv_preact": pre, "final_linear": style, "style_code": latent})
    image = self.stylegan_decoder(latent, conditions, None if taps is None else taps)
    return (image + 1.0) / 2.0


def bind(params) -> TemporalGFPGAN:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: TemporalGFPGAN(nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def load(ckpt_dir: str):
  params, _ = checkpointing.load_pretrained(ckpt_dir, model=MODEL_NAME)
  return params


def enhance_video(params, frames: Array) -> Array:
  """frames: [B, T, 256, 256, 3] in [0, 1] -> [B, T, 512, 512, 3] (not clamped, as official).

  Each batch item is its own clip, cut into segments of 16 frames run separately (official
  `temp_psz`).
  """
  model = bind(params)
  b, t = frames.shape[:2]
  out = []
  for start in range(0, t, SEGMENT):
    seg = frames[:, start:start + SEGMENT]
    out.append(jax.lax.map(model, seg))
  return jnp.concatenate(out, axis=1)
