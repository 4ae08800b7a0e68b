"""FOMM's unsupervised keypoint detector and its building blocks, shared by FOMM and FSRT.

FSRT (andrerochow/fsrt) ships a copy of FOMM's `KPDetector` without the jacobian head and with the
same parameter names, so both backbones build this one module, configured:
  * FOMM vox-256: `KPDetector(block_expansion=32, num_kp=10, num_channels=3, max_features=1024,
    num_blocks=5, temperature=0.1, scale_factor=0.25, estimate_jacobian=True)`;
  * FSRT: the same with `estimate_jacobian=False` (its defaults).

Layout is NHWC throughout. Attribute names follow the PyTorch module tree (`predictor.encoder.
down_blocks.0.conv`, `kp`, `jacobian`, `down`) so the converters map names mechanically.

Numerics that a port has to reproduce (and this one does):
  * the anti-aliased downscale pads with zeros, applies a depthwise Gaussian and keeps every
    1/scale-th pixel starting at 0 (a strided convolution computes exactly those outputs);
  * BatchNorm runs on its running statistics (eval mode, eps 1e-5; nnx's `module.train()` switches
    it to batch statistics for training, magplus_jax/fomm_training.py);
  * the hourglass pools with a 2x2 average and upsamples by nearest-neighbour repetition;
  * keypoints are heatmap-weighted means of a corner-aligned grid (`make_coordinate_grid`), the
    heatmap being a softmax over pixels of logits / temperature.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.resample import make_coordinate_grid

Array = jax.Array


class GaussianKernel(nnx.Variable):
  """A fixed (not trained) filter that checkpoints carry as a buffer: kept out of nnx.Param so an
  optimizer over Params never touches it, yet saved and converted with the rest of the state."""


def _pad2(p: int) -> list[tuple[int, int]]:
  return [(p, p), (p, p)]


def antialias_kernel(channels: int, scale: float) -> np.ndarray:
  """Depthwise Gaussian [K, K, 1, C] for a 1/scale downscale: sigma = (1/scale - 1)/2,
  K = 8*sigma + 1.

  Computed in float64 and rounded once; official checkpoints carry their own float32 copy (which
  differs by < 4e-9) and the converters load that one.
  """
  sigma = (1.0 / scale - 1.0) / 2.0
  size = 2 * round(sigma * 4) + 1
  ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-ax ** 2 / (2.0 * sigma ** 2))
  ker = np.outer(g, g)
  ker /= ker.sum()
  return np.broadcast_to(ker[:, :, None, None], (size, size, 1, channels)).astype(np.float32)


class AntiAliasInterpolation2d(nnx.Module):
  """Band-limited 1/2**n downscale: Gaussian blur, then subsampling from pixel 0."""

  def __init__(self, channels: int, scale: float):
    inv = 1.0 / scale
    if abs(inv - round(inv)) > 1e-6 or scale > 1:
      raise ValueError(f"AntiAliasInterpolation2d: scale {scale} is not 1/integer")
    self.stride = int(round(inv))
    self.weight = GaussianKernel(jnp.asarray(antialias_kernel(channels, scale)))

  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, C] -> [B, ceil(H*scale), ceil(W*scale), C]."""
    k = self.weight.shape[0]
    pad = k // 2  # K is odd, so the official (ka, kb) padding is symmetric
    return jax.lax.conv_general_dilated(
        x, self.weight[...].astype(x.dtype), window_strides=(self.stride, self.stride),
        padding=_pad2(pad), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])


def upsample_nearest2x(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2 (torch interpolate(scale_factor=2))."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # Eval mode by default (frozen backbones read the converted running statistics); training
  # (fomm_training.py) calls nnx's `model.train()`, which sets use_running_average=False here.
  return nnx.BatchNorm(features, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)


class DownBlock2d(nnx.Module):
  """conv -> BN -> ReLU -> 2x2 average pool (floors odd sizes, like nn.AvgPool2d)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
               *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                         padding=_pad2(padding), rngs=rngs)
    self.norm = batch_norm(out_features, rngs)

  def __call__(self, x: Array) -> Array:
    x = jax.nn.relu(self.norm(self.conv(x)))
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class UpBlock2d(nnx.Module):
  """nearest x2 -> conv -> BN -> ReLU."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
               *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                         padding=_pad2(padding), rngs=rngs)
    self.norm = batch_norm(out_features, rngs)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.norm(self.conv(upsample_nearest2x(x))))


class HourglassEncoder(nnx.Module):
  def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
               *, rngs: nnx.Rngs):
    width = lambda i: min(max_features, block_expansion * (2 ** i))
    self.down_blocks = nnx.List([
        DownBlock2d(in_features if i == 0 else width(i), width(i + 1), rngs=rngs)
        for i in range(num_blocks)])

  def __call__(self, x: Array) -> list[Array]:
    outs = [x]
    for block in self.down_blocks:
      outs.append(block(outs[-1]))
    return outs


class HourglassDecoder(nnx.Module):
  def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int,
               *, rngs: nnx.Rngs):
    width = lambda i: min(max_features, block_expansion * (2 ** i))
    self.up_blocks = nnx.List([
        UpBlock2d((1 if i == num_blocks - 1 else 2) * width(i + 1), width(i), rngs=rngs)
        for i in reversed(range(num_blocks))])
    self.out_filters = block_expansion + in_features

  def __call__(self, skips: list[Array]) -> Array:
    skips = list(skips)
    out = skips.pop()
    for block in self.up_blocks:
      out = jnp.concatenate([block(out), skips.pop()], axis=-1)
    return out


class Hourglass(nnx.Module):
  """U-Net whose output is the last up-block's features concatenated with the input."""

  def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
               max_features: int = 256, *, rngs: nnx.Rngs):
    args = (block_expansion, in_features, num_blocks, max_features)
    self.encoder = HourglassEncoder(*args, rngs=rngs)
    self.decoder = HourglassDecoder(*args, rngs=rngs)
    self.out_filters = self.decoder.out_filters

  def __call__(self, x: Array) -> Array:
    return self.decoder(self.encoder(x))


def heatmap_to_keypoints(heatmap: Array) -> Array:
  """heatmap [B, h, w, K] (sums to 1 over pixels) -> expected (x, y) [B, K, 2] in [-1, 1]."""
  _, h, w, _ = heatmap.shape
  grid = make_coordinate_grid(h, w, heatmap.dtype)  # [h, w, 2]
  return jnp.sum(heatmap[..., None] * grid[None, :, :, None, :], axis=(1, 2))


class KPDetector(nnx.Module):
  """Keypoints (and optionally local affine jacobians) from an image.

  __call__(x [B, H, W, C]) -> dict with
    value [B, K, 2] ((x, y) in [-1, 1]), jacobian [B, K, 2, 2] (if estimated),
    heatmap [B, h, w, K], feature_map [B, H*s, W*s, block_expansion + C], down [B, H*s, W*s, C]
  (the last three feed FSRT's expression encoder and the golden tests; unused ones cost nothing
  under jit).
  """

  def __init__(self, block_expansion: int = 32, num_kp: int = 10, num_channels: int = 3,
               max_features: int = 1024, num_blocks: int = 5, temperature: float = 0.1,
               estimate_jacobian: bool = False, scale_factor: float = 1.0,
               single_jacobian_map: bool = False, pad: int = 0, *, rngs: nnx.Rngs):
    self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features, rngs=rngs)
    feat = self.predictor.out_filters
    self.kp = nnx.Conv(feat, num_kp, (7, 7), padding=_pad2(pad), rngs=rngs)
    self.num_kp = num_kp
    self.num_jacobian_maps = (1 if single_jacobian_map else num_kp) if estimate_jacobian else 0
    if estimate_jacobian:
      self.jacobian = nnx.Conv(feat, 4 * self.num_jacobian_maps, (7, 7), padding=_pad2(pad),
                               rngs=rngs)
      # FOMM's own init: identity jacobians until trained.
      self.jacobian.kernel[...] = jnp.zeros_like(self.jacobian.kernel[...])
      self.jacobian.bias[...] = jnp.tile(jnp.array([1.0, 0.0, 0.0, 1.0]), self.num_jacobian_maps)
    else:
      self.jacobian = None
    self.temperature = temperature
    self.scale_factor = scale_factor
    self.down = AntiAliasInterpolation2d(num_channels, scale_factor) if scale_factor != 1 else None
    # Input sizes must survive the downscale and num_blocks poolings exactly.
    self.size_multiple = (self.down.stride if self.down is not None else 1) * 2 ** num_blocks

  def __call__(self, x: Array) -> dict[str, Array]:
    if self.down is not None:
      x = self.down(x)
    feature_map = self.predictor(x)
    logits = self.kp(feature_map)  # [B, h, w, K]
    b, h, w, k = logits.shape
    heatmap = jax.nn.softmax(logits.reshape(b, h * w, k) / self.temperature, axis=1)
    heatmap = heatmap.reshape(b, h, w, k)
    out = {"value": heatmap_to_keypoints(heatmap), "heatmap": heatmap,
           "feature_map": feature_map, "down": x}
    if self.jacobian is not None:
      jmap = self.jacobian(feature_map).reshape(b, h, w, self.num_jacobian_maps, 4)
      jac = jnp.sum(heatmap[..., None] * jmap, axis=(1, 2))  # [B, K, 4]
      out["jacobian"] = jac.reshape(b, k, 2, 2)
    return out
