"""Building blocks of MetaPortrait's base generator (Flax NNX, NHWC).

Everything the official `OcclusionAwareSPADEGenerator(hasid=True, use_SN=True)` is made of, below the
level of the three sub-networks: instance / layer norms, the ADAIN-conditioned hourglass of the
dense-motion network (its FOMM-like blocks differ from FOMM's BatchNorm hourglass in `keypoints.py`
in every norm, in the extra `SameBlock2d` per block and in the partial decoder, so only the nearest
x2 upsampling is shared), the reflection-padded warp, and the SPADE-with-identity residual blocks.

Spectral norm and EqualLR are gone here: the converter folds them into plain weights once
(`magplus_jax/ports/metaportrait.py`), which is exactly what torch computes in eval().
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from magplus_jax.models import resample
from magplus_jax.models.backbones.keypoints import upsample_nearest2x

Array = jax.Array
EPS = 1e-5


def mean_by_axis(x: Array, axes: tuple[int, ...]) -> Array:
  """The mean over `axes` (kept) taken one axis at a time.

  Why: XLA:CPU sums a float32 reduction over several axes as one long accumulation, so its
  rounding grows with the element count. LayerNorm2d's statistics over 64x64x512 = 2M values came
  out with a relative error of 1e-4 (activations off by 1.4e-3 at |x| 15, flow off by 6e-4 px on
  an AVX-512 Xeon: 50x torch's float32 run). Nested means keep every sum to one axis (<= 512
  terms here): on that Xeon the deformation is then within 4.8e-7 of torch's stored float32 numbers
(torch's own float64 rerun: 3.6e-7)."""
  for axis in sorted(axes, reverse=True):
    x = jnp.mean(x, axis=axis, keepdims=True)
  return x


def instance_norm(x: Array) -> Array:
  """Per-sample, per-channel normalisation over H, W (biased variance), no running statistics."""
  mean = mean_by_axis(x, (1, 2))
  var = mean_by_axis(jnp.square(x - mean), (1, 2))
  return (x - mean) * jax.lax.rsqrt(var + EPS)


def lrelu(x: Array, slope: float = 0.2) -> Array:
  return jnp.where(x >= 0, x, x * slope)


def conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1, bias: bool = True):
  p = k // 2
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)), use_bias=bias,
                  rngs=rngs)


def avg_pool2(x: Array) -> Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def up2_bilinear(x: Array) -> Array:
  return resample.resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))


class InstanceNormAffine(nnx.Module):
  def __init__(self, c: int):
    self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))

  def __call__(self, x: Array, style: Array | None = None) -> Array:
    return instance_norm(x) * self.scale[...] + self.bias[...]


class LayerNorm2d(nnx.Module):
  """Normalises over (H, W, C) together, then a per-channel affine (the official LayerNorm2d)."""

  def __init__(self, c: int):
    self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    mean = mean_by_axis(x, (1, 2, 3))
    var = mean_by_axis(jnp.square(x - mean), (1, 2, 3))
    return (x - mean) * jax.lax.rsqrt(var + EPS) * self.scale[...] + self.bias[...]


class ADAIN(nnx.Module):
  """IN(x) * (1 + gamma(style)) + beta(style), gamma/beta from a small MLP of the ladder style."""

  def __init__(self, c: int, style_dim: int, rngs: nnx.Rngs, hidden: int = 128):
    self.mlp_shared = nnx.Linear(style_dim, hidden, rngs=rngs)
    self.mlp_gamma = nnx.Linear(hidden, c, rngs=rngs)
    self.mlp_beta = nnx.Linear(hidden, c, rngs=rngs)

  def __call__(self, x: Array, style: Array) -> Array:
    h = jax.nn.relu(self.mlp_shared(style))
    gamma = self.mlp_gamma(h)[:, None, None, :]
    beta = self.mlp_beta(h)[:, None, None, :]
    return instance_norm(x) * (1 + gamma) + beta


def _norm(kind: str, c: int, style_dim: int, rngs: nnx.Rngs):
  return ADAIN(c, style_dim, rngs) if kind == "adain" else InstanceNormAffine(c)


class SameBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, norm: str, style_dim: int, rngs: nnx.Rngs):
    self.conv = conv(cin, cout, 3, rngs)
    self.norm = _norm(norm, cout, style_dim, rngs)

  def __call__(self, x: Array, style: Array | None) -> Array:
    return jax.nn.relu(self.norm(self.conv(x), style))


class DownBlock(nnx.Module):
  """conv -> norm -> ReLU -> 2x2 average pool (-> SameBlock when `same`)."""

  def __init__(self, cin, cout, norm, style_dim, same, rngs):
    self.conv = conv(cin, cout, 3, rngs)
    self.norm = _norm(norm, cout, style_dim, rngs)
    self.same = SameBlock(cout, cout, norm, style_dim, rngs) if same else None

  def __call__(self, x: Array, style: Array | None) -> Array:
    x = avg_pool2(jax.nn.relu(self.norm(self.conv(x), style)))
    return self.same(x, style) if self.same is not None else x


class UpBlock(nnx.Module):
  """nearest x2 -> conv -> norm -> ReLU (-> SameBlock when `same`)."""

  def __init__(self, cin, cout, norm, style_dim, same, rngs):
    self.conv = conv(cin, cout, 3, rngs)
    self.norm = _norm(norm, cout, style_dim, rngs)
    self.same = SameBlock(cout, cout, norm, style_dim, rngs) if same else None

  def __call__(self, x: Array, style: Array | None) -> Array:
    x = jax.nn.relu(self.norm(self.conv(upsample_nearest2x(x)), style))
    return self.same(x, style) if self.same is not None else x


class Hourglass(nnx.Module):
  """The official Hourglass: `num_blocks` down blocks, up blocks from the deepest to `dec_lease`.

  `__call__` returns (output, decoder list): the decoder list is [deepest encoder output, each up
  block's output, ..., and last the final concat], as the official `return_all=True`.
  """

  def __init__(self, in_features: int, block_expansion: int, max_features: int, num_blocks: int,
               dec_lease: int, norm: str, same: bool, style_dim: int, rngs: nnx.Rngs):
    width = lambda i: min(max_features, block_expansion * 2 ** i)
    self.num_down = num_blocks
    for i in range(num_blocks):
      cin = in_features if i == 0 else width(i)
      setattr(self, f"down{i}", DownBlock(cin, width(i + 1), norm, style_dim, same, rngs))
    self.num_up = num_blocks - dec_lease
    for n, i in enumerate(reversed(range(dec_lease, num_blocks))):
      cin = (1 if i == num_blocks - 1 else 2) * width(i + 1)
      setattr(self, f"up{n}", UpBlock(cin, width(i), norm, style_dim, same, rngs))
      out = width(i)
    self.out_features = out + in_features if dec_lease == 0 else 2 * out

  def __call__(self, x: Array, style: Array | None = None):
    skips = [x]
    for i in range(self.num_down):
      skips.append(getattr(self, f"down{i}")(skips[-1], style))
    out = skips.pop()
    outs = [out]
    for n in range(self.num_up):
      out = getattr(self, f"up{n}")(out, style)
      outs.append(out)
      out = jnp.concatenate([out, skips.pop()], axis=-1)
    outs[-1] = out
    return out, outs


def deform(x: Array, deformation: Array) -> Array:
  """The official `deform_input`: resize the deformation to x, then sample with reflection.

  x: [B, H, W, C]; deformation: [B, h, w, 2] (x, y) in [-1, 1], read with align_corners=False.
  """
  _, h, w, _ = x.shape
  grid = resample.resize_bilinear(deformation, (h, w))
  return resample.grid_sample(x, grid, padding="reflection")


class SPADE(nnx.Module):
  """SPADE with identity: att * (IN(x)(1+gamma(seg)) + beta(seg)) + (1 - att) * AdaIN(x, id).

  att = sigmoid(conv(x)) is computed on the un-normalised x; AdaIN's [gamma, beta] come from a linear
  map of the identity embedding (EqualLR already folded into its kernel).
  """

  def __init__(self, c: int, label_nc: int, id_dim: int, rngs: nnx.Rngs, hidden: int = 128):
    self.mlp_shared = conv(label_nc, hidden, 3, rngs)
    self.mlp_gamma = conv(hidden, c, 3, rngs)
    self.mlp_beta = conv(hidden, c, 3, rngs)
    self.mlp_attention = conv(c, 1, 3, rngs)
    self.adain = nnx.Linear(id_dim, 2 * c, rngs=rngs)
    self.c = c

  def __call__(self, x: Array, seg: Array, id_emb: Array, taps: dict | None = None) -> Array:
    normalized = instance_norm(x)
    actv = jax.nn.relu(self.mlp_shared(seg))
    gamma = self.mlp_gamma(actv)
    beta = self.mlp_beta(actv)
    spade = normalized * (1 + gamma) + beta
    attention = jax.nn.sigmoid(self.mlp_attention(x))
    style = self.adain(id_emb)[:, None, None, :]
    adain = normalized * style[..., :self.c] + style[..., self.c:]
    if taps is not None:
      taps.update(attention=attention, adain=adain, gamma=gamma, beta=beta)
    return attention * spade + (1 - attention) * adain


class SPADEResBlock(nnx.Module):
  def __init__(self, fin: int, fout: int, label_nc: int, id_dim: int, rngs: nnx.Rngs):
    mid = min(fin, fout)
    self.conv_0 = conv(fin, mid, 3, rngs)
    self.conv_1 = conv(mid, fout, 3, rngs)
    self.norm_0 = SPADE(fin, label_nc, id_dim, rngs)
    self.norm_1 = SPADE(mid, label_nc, id_dim, rngs)
    if fin != fout:
      self.conv_s = conv(fin, fout, 1, rngs, bias=False)
      self.norm_s = SPADE(fin, label_nc, id_dim, rngs)
    else:
      self.conv_s = self.norm_s = None

  def __call__(self, x: Array, seg: Array, id_emb: Array, taps: dict | None = None) -> Array:
    skip = x if self.conv_s is None else self.conv_s(self.norm_s(x, seg, id_emb))
    dx = self.conv_0(lrelu(self.norm_0(x, seg, id_emb, taps)))
    dx = self.conv_1(lrelu(self.norm_1(dx, seg, id_emb)))
    return skip + dx
