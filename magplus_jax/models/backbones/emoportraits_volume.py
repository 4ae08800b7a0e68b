"""EMOPortraits stage 1, part 1: shared layers and the 3-D networks (warp generators, volume nets).

A Flax NNX port of the volumetric avatar of EMOPortraits (Drobyshev et al., CVPR 2024), written
from the official code github.com/neeek2303/EMOPortraits @ 7cb86416, which is licensed
**CC BY-NC-SA 4.0** (non-commercial, share-alike). This port and any weights converted from the
official release inherit that licence.

Everything is channels-last: images [B, H, W, C], volumes [B, D, H, W, C] (D the depth axis, z).
Warps are [B, D, H, W, 3] with the last axis (x->W, y->H, z->D) in [-1, 1], the convention of
`resample.grid_sample_3d` (torch's grid_sample with align_corners=False, zeros padding).

The official layers are spectrally normalised or weight standardised. Both only reparametrise the
weight, so the converter (magplus_jax/ports/emoportraits.py) folds them; `SNConv` and `WSConv` are
plain convolutions that only record, for the converter, which parametrisation the checkpoint holds.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.resample import resize_bilinear

Array = jax.Array
GROUPS = 32       # every norm of the model is GroupNorm(32, eps 1e-5)
GN_EPS = 1e-5


# ----------------------------------------------------------------------------- grids, resampling

def torch_linspace(n: int) -> np.ndarray:
  """torch.linspace(-1, 1, n) in float32, bit for bit.

  torch computes the two halves from either end (one rounding each); np.linspace differs by one
  ulp in up to a third of the entries, which the rotation warps would carry (tolerance 1e-6).
  """
  if n == 1:
    return np.array([-1.0], np.float32)
  step = float(np.float32(2.0 / (n - 1)))
  i = np.arange(n, dtype=np.float64)
  lo = -1.0 + i * step
  hi = 1.0 - (n - 1 - i) * step
  return np.where(i < n // 2, lo, hi).astype(np.float32)


@functools.lru_cache(maxsize=None)
def identity_grid_3d(d: int, h: int, w: int) -> np.ndarray:
  """[D, H, W, 3] normalised coordinates (x, y, z) of the voxel centres, as the official grids."""
  z, y, x = np.meshgrid(torch_linspace(d), torch_linspace(h), torch_linspace(w), indexing="ij")
  return np.stack([x, y, z], axis=-1)


@functools.lru_cache(maxsize=None)
def identity_grid_2d(h: int, w: int) -> np.ndarray:
  """[H, W, 2] normalised coordinates (x, y)."""
  y, x = np.meshgrid(torch_linspace(h), torch_linspace(w), indexing="ij")
  return np.stack([x, y], axis=-1)


def upsample_linear(x: Array, scale: tuple[int, int, int]) -> Array:
  """torch F.interpolate(mode="trilinear", scale_factor=scale, align_corners=False), NDHWC.

  Trilinear interpolation is separable, so it is two calls of the project's bilinear resize: one
  over (H, W), one over D (the other axes folded into a width-1 image).
  """
  b, d, h, w, c = x.shape
  sd, sh, sw = scale
  if (sh, sw) != (1, 1):
    x = resize_bilinear(x.reshape(b * d, h, w, c), (h * sh, w * sw)).reshape(b, d, h * sh, w * sw, c)
    h, w = h * sh, w * sw
  if sd != 1:
    x = resize_bilinear(x.reshape(b, d, 1, h * w * c), (d * sd, 1)).reshape(b, d * sd, h, w, c)
  return x


def avg_pool(x: Array, window: tuple[int, ...]) -> Array:
  """Non-overlapping average pooling over the spatial axes of [B, *spatial, C] (AvgPool2d/3d)."""
  shape = [x.shape[0]]
  for n, k in zip(x.shape[1:-1], window):
    shape += [n // k, k]
  y = x.reshape(*shape, x.shape[-1])
  return y.mean(axis=tuple(range(2, 2 + 2 * len(window), 2)))


def upsample_nearest2(x: Array) -> Array:
  """F.interpolate(scale_factor=2, mode="nearest") of [B, H, W, C]: a plain 2x2 repeat."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ----------------------------------------------------------------------------- layers

class SNConv(nnx.Conv):
  """A convolution that the checkpoint stores spectrally normalised (weight_orig, _u, _v)."""


class WSConv(nnx.Conv):
  """A convolution that the checkpoint stores weight standardised (a plain 'weight' plus bias)."""


class SNLinear(nnx.Linear):
  """A linear layer that the checkpoint stores spectrally normalised."""


def conv(kind: type, nd: int, cin: int, cout: int, k: int, *, bias: bool, rngs: nnx.Rngs,
         stride: int = 1, pad: int | None = None) -> nnx.Conv:
  """A torch-style convolution: explicit symmetric zero padding (k // 2 unless given)."""
  pad = k // 2 if pad is None else pad
  return kind(cin, cout, (k,) * nd, strides=(stride,) * nd, padding=[(pad, pad)] * nd,
              use_bias=bias, rngs=rngs)


def _blocked_mean(v: Array, block: int = 64) -> Array:
  """Mean over the last axis, summed in blocks of `block` (level by level) rather than in one
  long running sum: the float32 statistics of a 64x64 x 8-channel group (32768 terms) otherwise
  lose ~1e-5 relative, which the ResNet-50 identity embedder amplifies to 1e-4 (issue #21)."""
  n = v.shape[-1]
  s = v
  while s.shape[-1] > block and s.shape[-1] % block == 0:
    s = s.reshape(*s.shape[:-1], s.shape[-1] // block, block).sum(axis=-1)
  return s.sum(axis=-1, keepdims=True) / n


def group_norm(x: Array, groups: int = GROUPS, eps: float = GN_EPS) -> Array:
  """Non-affine GroupNorm of [B, *spatial, C]; statistics in float32 or wider (float64 inputs
  keep float64: a float64 run must be float64 throughout to check the port against the
  reference), two-pass variance, block-summed means."""
  b, c = x.shape[0], x.shape[-1]
  xg = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(b, -1, groups, c // groups)
  flat = xg.transpose(0, 2, 1, 3).reshape(b, groups, -1)
  mean = _blocked_mean(flat)
  var = _blocked_mean(jnp.square(flat - mean))
  mean, var = mean[:, None, :, :], var[:, None, :, :]
  return ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape).astype(x.dtype)


class GroupNorm(nnx.Module):
  """torch.nn.GroupNorm(32, C, eps=1e-5) with affine weight (scale) and bias."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs | None = None):
    del rngs
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: Array, embed: Array | None = None) -> Array:
    del embed
    return group_norm(x) * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class AdaptiveGroupNorm(nnx.Module):
  """GroupNorm modulated by a projection of the warp embedding E [B, 512, 16].

  As executed officially: out = (gn(x) * scale + bias) * (scale + dγ) + (bias + dβ), with
  [dγ dβ] = proj_u (C x 512) @ E @ proj_v (16 x 2) per batch element. The official class builds
  torch's GroupNorm with affine=False but then assigns `weight` and `bias` parameters, which
  torch's GroupNorm.forward applies anyway; so the affine acts twice (inner and in the modulation).
  This is how the identity/expression embedding steers the warp generators.
  """

  def __init__(self, channels: int, embed_channels: int = 512, embed_len: int = 16, *,
               rngs: nnx.Rngs | None = None):
    del rngs
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.proj_u = nnx.Param(jnp.zeros((channels, embed_channels), jnp.float32))
    self.proj_v = nnx.Param(jnp.zeros((embed_len, 2), jnp.float32))

  def __call__(self, x: Array, embed: Array | None = None) -> Array:
    """x: [B, *spatial, C]; embed: [B, 512, 16]."""
    u = self.proj_u[...].astype(embed.dtype)
    p = jnp.matmul(jnp.matmul(u[None], embed), self.proj_v[...].astype(embed.dtype)[None])
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    gamma = (self.scale[...][None] + p[..., 0]).reshape(shape).astype(x.dtype)
    beta = (self.bias[...][None] + p[..., 1]).reshape(shape).astype(x.dtype)
    inner = group_norm(x) * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)
    return inner * gamma + beta


class ResBlock(nnx.Module):
  """The official pre-activation residual block, 2-D or 3-D.

  out = out_conv(relu(mid_norm(in_conv(relu(in_norm(x)))))) [+ avgpool] + skip(x) [+ avgpool];
  with resample="up" a nearest x2 upsampling is applied to x first (both branches). in_conv follows a
  GroupNorm, so the official code weight-standardised it (and gave it a bias) in the 2-D blocks and
  in the adaptive 3-D blocks of the warp generators; the plain 3-D blocks kept it spectral-norm only.
  """

  def __init__(self, nd: int, cin: int, cout: int, *, rngs: nnx.Rngs, adaptive: bool = False,
               resample: str | None = None, embed_channels: int = 512, embed_len: int = 16):
    if adaptive:
      norm = functools.partial(AdaptiveGroupNorm, embed_channels=embed_channels,
                               embed_len=embed_len)
    else:
      norm = GroupNorm
    ws = nd == 2 or adaptive
    self.resample = resample
    self.in_norm = norm(cin, rngs=rngs)
    self.in_conv = conv(WSConv if ws else SNConv, nd, cin, cout, 3, bias=ws, rngs=rngs)
    self.mid_norm = norm(cout, rngs=rngs)
    self.out_conv = conv(SNConv, nd, cout, cout, 3, bias=False, rngs=rngs)
    self.skip = conv(SNConv, nd, cin, cout, 1, bias=False, rngs=rngs) if cin != cout else None

  def __call__(self, x: Array, embed: Array | None = None) -> Array:
    if self.resample == "up":
      x = upsample_nearest2(x)
    h = self.in_conv(jax.nn.relu(self.in_norm(x, embed)))
    h = self.out_conv(jax.nn.relu(self.mid_norm(h, embed)))
    s = x if self.skip is None else self.skip(x)
    if self.resample == "down":
      window = (2,) * (x.ndim - 2)
      h, s = avg_pool(h, window), avg_pool(s, window)
    return h + s


# ----------------------------------------------------------------------------- 3-D networks

def _depth_schedule(in_size: int, out_depth: int, out_size: int, n_blocks: int):
  """The warp generator's per-block resampling: [(upsample scale, pool depth after?)]."""
  n_depth = int(math.log2(out_size // in_size))
  size = [in_size] * 3
  steps = []
  for i in range(1, n_blocks + 1):
    size[1] *= 2
    size[2] *= 2
    depth = min(out_depth * 2 ** (n_depth - i), size[1]) if i < n_depth else out_depth
    scale = (2, 2, 2) if depth > size[0] else (1, 2, 2)
    steps.append((scale, depth < size[0]))
    size[0] = depth
  return steps


class WarpGenerator(nnx.Module):
  """Embedding [B, 512, 16] -> a 3-D warp [B, D, H, W, 3] (identity grid + tanh offsets).

  The xy generator maps the source volume to the canonical one, the uv generator the canonical
  volume to the driver's expression. Its norms are adaptive (AdaptiveGroupNorm), the only place
  where the embedding enters at this config.
  """

  def __init__(self, *, rngs: nnx.Rngs, embed_channels: int = 512, embed_size: int = 4,
               depth: int = 16, size: int = 64, base_channels: int = 32, max_channels: int = 512):
    n_blocks = int(math.log2(size // embed_size))
    chans = [min(base_channels * 2 ** i, max_channels) // 32 * 32 for i in range(n_blocks, -1, -1)]
    self.embed_size = embed_size
    self.depth, self.size = depth, size
    self.first_conv = conv(SNConv, 2, embed_channels, chans[0] * embed_size, 1, bias=False,
                           rngs=rngs)
    self.blocks = nnx.List([ResBlock(3, a, b, adaptive=True, embed_channels=embed_channels,
                                     embed_len=embed_size ** 2, rngs=rngs)
                            for a, b in zip(chans[:-1], chans[1:])])
    self.pre_head_norm = GroupNorm(chans[-1])
    self.head = conv(SNConv, 3, chans[-1], 3, 3, bias=True, rngs=rngs)

  def __call__(self, embed: Array) -> Array:
    b, c, _ = embed.shape
    s = self.embed_size
    x = self.first_conv(embed.transpose(0, 2, 1).reshape(b, s, s, c))      # [B, s, s, C*s]
    x = x.reshape(b, s, s, -1, s).transpose(0, 4, 1, 2, 3)                # torch channel = c*s + d
    for block, (scale, pool) in zip(
        self.blocks, _depth_schedule(s, self.depth, self.size, len(self.blocks))):
      x = block(upsample_linear(x, scale), embed)
      if pool:
        x = avg_pool(x, (2, 1, 1))
    delta = jnp.tanh(self.head(jax.nn.relu(self.pre_head_norm(x))))
    grid = identity_grid_3d(self.depth, self.size, self.size)
    return jnp.asarray(grid)[None] + delta.astype(jnp.float32)    # coordinates stay float32


class VolumeResBlocks(nnx.Module):
  """The source-volume preprocessor: plain 3-D ResBlocks at constant width (VPN_ResBlocks)."""

  def __init__(self, channels: int, num_blocks: int, *, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResBlock(3, channels, channels, rngs=rngs) for _ in range(num_blocks)])

  def __call__(self, x: Array) -> Array:
    for block in self.blocks:
      x = block(x)
    return x


class Unet3D(nnx.Module):
  """The volume processor: a 3-D U-Net whose decoder starts from a learned 8^3 tensor.

  The encoder path keeps its features; the decoder path upsamples `input_tensor` and adds each
  encoder feature (through a skip ResBlock) before its block. The depth first grows (x2 to 32)
  then shrinks back to 16, as the official size schedule does.
  """

  def __init__(self, *, rngs: nnx.Rngs, channels: int = 96, depth: int = 16, size: int = 64,
               input_size: int = 8, max_channels: int = 512):
    n = int(math.log2(size // input_size))
    down = [channels]
    for _ in range(n):
      down.append(min(down[-1] * 2, max_channels))
    up = [min(channels * 2 ** i, max_channels) for i in range(n, -1, -1)]
    self.depth, self.size, self.input_size = depth, size, input_size
    self.down_blocks = nnx.List([ResBlock(3, a, b, rngs=rngs) for a, b in zip(down[:-1], down[1:])])
    self.up_blocks = nnx.List([ResBlock(3, a, b, rngs=rngs) for a, b in zip(up[:-1], up[1:])])
    self.skip_blocks = nnx.List([ResBlock(3, a, a, rngs=rngs) for a in up[:-1]])
    self.input_tensor = nnx.Param(jnp.zeros((1, input_size, input_size, input_size, up[0])))
    self.head_norm = GroupNorm(up[-1])
    self.head_conv = conv(SNConv, 3, up[-1], up[-1], 1, bias=True, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """x: [B, D, H, W, C] -> same shape."""
    feats = []
    size = [self.depth, x.shape[2], x.shape[3]]
    n = len(self.down_blocks)
    for i, block in enumerate(self.down_blocks):
      last = i == n - 1
      if not last:
        size[1] //= 2
        size[2] //= 2
        old_depth, size[0] = size[0], min(size[0] * 2, size[1])
        if size[0] > old_depth:
          x = upsample_linear(x, (2, 1, 1))
      x = block(x)
      feats.append(x)
      if not last:
        x = avg_pool(x, (2, 2, 2) if size[0] < old_depth else (1, 2, 2))
    x = jnp.broadcast_to(self.input_tensor[...].astype(x.dtype),
                         (x.shape[0],) + self.input_tensor.shape[1:])
    size = list(x.shape[1:4])
    for i, (block, skip, feat) in enumerate(
        zip(self.up_blocks, self.skip_blocks, feats[::-1]), 1):
      size[1] *= 2
      size[2] *= 2
      new_depth = min(self.depth * 2 ** (len(self.up_blocks) - i), size[1])
      x = upsample_linear(x, (2, 2, 2) if new_depth > size[0] else (1, 2, 2))
      x = block(x + skip(feat))
      if new_depth < size[0]:
        x = avg_pool(x, (2, 1, 1))
      size[0] = new_depth
    return self.head_conv(jax.nn.relu(self.head_norm(x)))
