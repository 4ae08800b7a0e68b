"""The project's one place for resampling: grid_sample (2-D and 3-D), flow warping, resizes.

Every port (FOMM, RAFT, MetaPortrait, EMOPortraits), the magnifier losses and the warp backbone go
through these functions, so a convention is decided once. All tensors are channels-last (NHWC,
NDHWC). Sampling is bilinear / trilinear with **zeros padding**, matching torch's
`F.grid_sample(mode="bilinear", padding_mode="zeros")`; 2-D grid_sample also has torch's
"reflection" padding (MetaPortrait's deformation).

align_corners (torch's meaning, for normalised coordinates in [-1, 1]):
  * True:  -1 and +1 are the centres of the first and last pixel: px = (x + 1) / 2 * (W - 1).
  * False: -1 and +1 are the outer edges of the first and last pixel: px = ((x + 1) * W - 1) / 2.
FOMM's official checkpoints were trained under torch 1.0, whose grid_sample behaved as True; torch
>= 1.3 runs the same code as False (and the golden numbers were made that way).

Gradients flow to both the image and the coordinates (through the interpolation weights), as in
torch, which is what back-propagating a loss through a warp needs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _unnormalize(coord: Array, size: int, align_corners: bool) -> Array:
  if align_corners:
    return (coord + 1.0) * 0.5 * (size - 1)
  return ((coord + 1.0) * size - 1.0) * 0.5


def _gather_2d(image: Array, yi: Array, xi: Array) -> Array:
  """image [H, W, C], integer yi/xi [...] (already clipped) -> [..., C]."""
  return image[yi, xi]


def sample_pixels(image: Array, x: Array, y: Array) -> Array:
  """Bilinear sampling at pixel coordinates, zeros outside the image.

  image: [B, H, W, C]; x, y: [B, ...] pixel coordinates (x along the width, pixel centres at
  integers). Returns [B, ..., C].
  """
  _, h, w, _ = image.shape
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  wx1 = x - x0
  wy1 = y - y0
  wx0 = 1.0 - wx1
  wy0 = 1.0 - wy1
  x0i = x0.astype(jnp.int32)
  y0i = y0.astype(jnp.int32)

  out = 0.0
  for dy, wy in ((0, wy0), (1, wy1)):
    for dx, wx in ((0, wx0), (1, wx1)):
      xi = x0i + dx
      yi = y0i + dy
      valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
      vals = jax.vmap(_gather_2d)(image, jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1))
      weight = jnp.where(valid, wx * wy, 0.0).astype(image.dtype)
      out = out + vals * weight[..., None]
  return out


def reflect_coordinates(coord: Array, size: int, align_corners: bool = False) -> Array:
  """torch grid_sample's reflection padding on pixel coordinates, so every coordinate lands inside.

  align_corners=False mirrors the image about its outer edges (-0.5 and size - 0.5); True about the
  centres of its border pixels (0 and size - 1), as torch does for each setting."""
  if align_corners:
    span = max(size - 1, 1)
    c = jnp.mod(jnp.abs(coord), 2 * span)
    return jnp.clip(jnp.where(c > span, 2 * span - c, c), 0.0, size - 1.0)
  c = jnp.abs(coord + 0.5)
  flips = jnp.floor(c / size)
  extra = jnp.mod(c, size)
  out = jnp.where(jnp.mod(flips, 2) == 0, extra - 0.5, size - extra - 0.5)
  return jnp.clip(out, 0.0, size - 1.0)


def grid_sample(image: Array, grid: Array, align_corners: bool = False,
                padding: str = "zeros") -> Array:
  """torch.nn.functional.grid_sample (bilinear; padding_mode "zeros" or "reflection") in NHWC.

  image: [B, H, W, C]; grid: [B, h, w, 2] with (x, y) in [-1, 1]. Returns [B, h, w, C].
  """
  _, h, w, _ = image.shape
  x = _unnormalize(grid[..., 0], w, align_corners)
  y = _unnormalize(grid[..., 1], h, align_corners)
  if padding == "reflection":
    x, y = reflect_coordinates(x, w, align_corners), reflect_coordinates(y, h, align_corners)
  elif padding != "zeros":
    raise ValueError(f"grid_sample: padding {padding!r}; choose 'zeros' or 'reflection'")
  return sample_pixels(image, x, y)


def _gather_3d(volume: Array, zi: Array, yi: Array, xi: Array) -> Array:
  return volume[zi, yi, xi]


def grid_sample_3d(volume: Array, grid: Array, align_corners: bool = False) -> Array:
  """torch grid_sample on 5-D input (trilinear, zeros padding), channels-last.

  volume: [B, D, H, W, C]; grid: [B, d, h, w, 3] with (x, y, z) in [-1, 1]. Returns [B, d, h, w, C].
  """
  _, dd, hh, ww, _ = volume.shape
  x = _unnormalize(grid[..., 0], ww, align_corners)
  y = _unnormalize(grid[..., 1], hh, align_corners)
  z = _unnormalize(grid[..., 2], dd, align_corners)
  x0, y0, z0 = jnp.floor(x), jnp.floor(y), jnp.floor(z)
  fx, fy, fz = x - x0, y - y0, z - z0
  x0i, y0i, z0i = x0.astype(jnp.int32), y0.astype(jnp.int32), z0.astype(jnp.int32)
  out = 0.0
  for dz, wz in ((0, 1.0 - fz), (1, fz)):
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
      for dx, wx in ((0, 1.0 - fx), (1, fx)):
        xi, yi, zi = x0i + dx, y0i + dy, z0i + dz
        valid = ((xi >= 0) & (xi <= ww - 1) & (yi >= 0) & (yi <= hh - 1)
                 & (zi >= 0) & (zi <= dd - 1))
        vals = jax.vmap(_gather_3d)(volume, jnp.clip(zi, 0, dd - 1), jnp.clip(yi, 0, hh - 1),
                                    jnp.clip(xi, 0, ww - 1))
        weight = jnp.where(valid, wx * wy * wz, 0.0).astype(volume.dtype)
        out = out + vals * weight[..., None]
  return out


def pixel_grid(h: int, w: int, dtype=jnp.float32) -> Array:
  """[H, W, 2] pixel coordinates (x, y) of pixel centres."""
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=dtype), jnp.arange(w, dtype=dtype), indexing="ij")
  return jnp.stack([xs, ys], axis=-1)


def make_coordinate_grid(h: int, w: int, dtype=jnp.float32) -> Array:
  """[H, W, 2] corner-aligned normalised coordinates (x, y): x = 2 * i / (w - 1) - 1 (FOMM's grid)."""
  xs = 2.0 * jnp.arange(w, dtype=dtype) / (w - 1) - 1.0
  ys = 2.0 * jnp.arange(h, dtype=dtype) / (h - 1) - 1.0
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return jnp.stack([xx, yy], axis=-1)


def warp(image: Array, flow: Array) -> Array:
  """Backward warp: out[p] = image[p + flow[p]] (bilinear, zeros outside).

  image: [B, H, W, C]; flow: [B, H, W, 2] in pixels, (x, y). With flow = F(I0, I1) (I0 -> I1),
  warp(I1, flow) brings I1 back onto I0's pixel grid.
  """
  b, h, w, _ = image.shape
  coords = pixel_grid(h, w, flow.dtype)[None] + flow
  return sample_pixels(image, coords[..., 0], coords[..., 1])


def resize_bilinear(image: Array, size: tuple[int, int], align_corners: bool = False) -> Array:
  """torch F.interpolate(mode="bilinear") without antialiasing, NHWC. size = (h, w)."""
  b, h, w, c = image.shape
  oh, ow = size
  if (oh, ow) == (h, w):
    return image
  if align_corners:
    ys = jnp.arange(oh, dtype=jnp.float32) * ((h - 1) / max(oh - 1, 1))
    xs = jnp.arange(ow, dtype=jnp.float32) * ((w - 1) / max(ow - 1, 1))
  else:
    ys = jnp.clip((jnp.arange(oh, dtype=jnp.float32) + 0.5) * (h / oh) - 0.5, 0.0, None)
    xs = jnp.clip((jnp.arange(ow, dtype=jnp.float32) + 0.5) * (w / ow) - 0.5, 0.0, None)
  y0 = jnp.minimum(jnp.floor(ys).astype(jnp.int32), h - 1)
  x0 = jnp.minimum(jnp.floor(xs).astype(jnp.int32), w - 1)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)
  wy = (ys - y0).astype(image.dtype)[None, :, None, None]
  wx = (xs - x0).astype(image.dtype)[None, None, :, None]
  rows0 = image[:, y0]
  rows1 = image[:, y1]
  top = rows0[:, :, x0] * (1 - wx) + rows0[:, :, x1] * wx
  bot = rows1[:, :, x0] * (1 - wx) + rows1[:, :, x1] * wx
  return top * (1 - wy) + bot * wy


def resize_flow(flow: Array, size: tuple[int, int]) -> Array:
  """Resize a pixel flow field [B, H, W, 2] to size (h, w), rescaling its vectors."""
  _, h, w, _ = flow.shape
  out = resize_bilinear(flow, size)
  scale = jnp.array([size[1] / w, size[0] / h], flow.dtype)
  return out * scale
