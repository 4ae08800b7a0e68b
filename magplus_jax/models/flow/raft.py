"""RAFT optical flow (Teed & Deng, ECCV 2020) in Flax NNX, full and small.

A port of princeton-vl/RAFT @ 2888e15a (the code FlowMag's `raft-things.pth` comes from); weights come
from the official checkpoints through `python -m magplus_jax.ports.raft`. Layout decisions:

* Images enter as [B, H, W, 3] RGB in [0, 1] and are mapped to [-1, 1] by `2 * x - 1`, which is the
  official `2 * (x / 255) - 1` for frames scaled by 1/255.
* The network runs at 1/8 resolution and its correlation pyramid has 4 levels, so H and W must be
  multiples of 8 and at least 128 (at 1/8 the 4th level must be wider than one pixel; the official
  code returns NaN below that). `RAFT.__call__` requires this; the `FlowEstimator` from `build`
  checks H, W >= 128 and pads to a multiple of 8 itself.
* The feature encoder (fnet) uses instance norm without affine parameters and per-image statistics,
  also at inference. The full context encoder (cnet) uses batch norm with its running statistics
  (the network is frozen here, as RAFT's own `freeze_bn` does when fine-tuning).
* Refinement runs under `jax.lax.scan`, so the compile cost does not grow with the iteration count.
  `coords1` gets a stop-gradient at the start of every iteration, as the official `coords1.detach()`:
  gradients reach the images through the correlation values, the context features and the GRU state,
  but not through the lookup positions or the running flow sum of earlier iterations.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax import traverse_util

from magplus_jax.checkpointing import check_state_dict, load_pretrained
from magplus_jax.models import resample
from magplus_jax.models.flow import FlowEstimator
from magplus_jax.models.flow.raft_update import (UpdateBlock, bilinear_upsample8,
                                                 convex_upsample, dims)
from magplus_jax.models.flow.raft_update import conv as _conv

Array = jax.Array

MIN_SIZE = 128  # the 4-level pyramid needs H/8, W/8 >= 16 (see module docstring)


def normalize_image(image: Array) -> Array:
  """[0, 1] RGB -> RAFT's [-1, 1] input."""
  return 2.0 * image - 1.0


# RAFT initialises its encoders with Kaiming normal (fan_out); only matters for training from scratch.
_ENCODER_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
  """InstanceNorm2d(affine=False): per image and channel over H, W (biased variance)."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _make_norm(norm_fn: str, channels: int, rngs: nnx.Rngs):
  if norm_fn == "batch":
    return nnx.BatchNorm(channels, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
  if norm_fn in ("instance", "none"):
    return None
  raise ValueError(f"RAFT encoder norm_fn must be 'batch', 'instance' or 'none'; got {norm_fn!r}")


def _apply_norm(norm_fn: str, layer, x: Array) -> Array:
  if norm_fn == "batch":
    return layer(x)
  if norm_fn == "instance":
    return instance_norm(x)
  return x


class ResidualBlock(nnx.Module):
  """Two 3x3 convs (the full encoders); a strided 1x1 conv + norm on the skip when downsampling."""

  def __init__(self, cin: int, cout: int, norm_fn: str, stride: int, *, rngs: nnx.Rngs):
    self.norm_fn = norm_fn
    self.conv1 = _conv(cin, cout, 3, rngs, stride=stride, init=_ENCODER_INIT)
    self.conv2 = _conv(cout, cout, 3, rngs, init=_ENCODER_INIT)
    self.norm1 = _make_norm(norm_fn, cout, rngs)
    self.norm2 = _make_norm(norm_fn, cout, rngs)
    down = stride != 1
    self.downsample = _conv(cin, cout, 1, rngs, stride=stride, init=_ENCODER_INIT) if down else None
    self.downsample_norm = _make_norm(norm_fn, cout, rngs) if down else None

  def __call__(self, x: Array) -> Array:
    y = jax.nn.relu(_apply_norm(self.norm_fn, self.norm1, self.conv1(x)))
    y = jax.nn.relu(_apply_norm(self.norm_fn, self.norm2, self.conv2(y)))
    if self.downsample is not None:
      x = _apply_norm(self.norm_fn, self.downsample_norm, self.downsample(x))
    return jax.nn.relu(x + y)


class BottleneckBlock(nnx.Module):
  """1x1 -> 3x3 -> 1x1 at a quarter of the width (the small encoders)."""

  def __init__(self, cin: int, cout: int, norm_fn: str, stride: int, *, rngs: nnx.Rngs):
    mid = cout // 4
    self.norm_fn = norm_fn
    self.conv1 = _conv(cin, mid, 1, rngs, init=_ENCODER_INIT)
    self.conv2 = _conv(mid, mid, 3, rngs, stride=stride, init=_ENCODER_INIT)
    self.conv3 = _conv(mid, cout, 1, rngs, init=_ENCODER_INIT)
    self.norm1 = _make_norm(norm_fn, mid, rngs)
    self.norm2 = _make_norm(norm_fn, mid, rngs)
    self.norm3 = _make_norm(norm_fn, cout, rngs)
    down = stride != 1
    self.downsample = _conv(cin, cout, 1, rngs, stride=stride, init=_ENCODER_INIT) if down else None
    self.downsample_norm = _make_norm(norm_fn, cout, rngs) if down else None

  def __call__(self, x: Array) -> Array:
    y = jax.nn.relu(_apply_norm(self.norm_fn, self.norm1, self.conv1(x)))
    y = jax.nn.relu(_apply_norm(self.norm_fn, self.norm2, self.conv2(y)))
    y = jax.nn.relu(_apply_norm(self.norm_fn, self.norm3, self.conv3(y)))
    if self.downsample is not None:
      x = _apply_norm(self.norm_fn, self.downsample_norm, self.downsample(x))
    return jax.nn.relu(x + y)


class Stage(nnx.Module):
  """Two blocks; the first may downsample. Named block0/block1 (torch: `layerN.0`, `layerN.1`)."""

  def __init__(self, block, cin: int, cout: int, norm_fn: str, stride: int, *, rngs: nnx.Rngs):
    self.block0 = block(cin, cout, norm_fn, stride, rngs=rngs)
    self.block1 = block(cout, cout, norm_fn, 1, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.block1(self.block0(x))


class Encoder(nnx.Module):
  """RAFT's BasicEncoder (full) / SmallEncoder (small): [B, H, W, 3] -> [B, H/8, W/8, out_dim]."""

  def __init__(self, out_dim: int, norm_fn: str, small: bool, *, rngs: nnx.Rngs):
    stem, widths = (32, (32, 64, 96)) if small else (64, (64, 96, 128))
    block = BottleneckBlock if small else ResidualBlock
    self.norm_fn = norm_fn
    self.conv1 = _conv(3, stem, 7, rngs, stride=2, init=_ENCODER_INIT)
    self.norm1 = _make_norm(norm_fn, stem, rngs)
    self.layer1 = Stage(block, stem, widths[0], norm_fn, 1, rngs=rngs)
    self.layer2 = Stage(block, widths[0], widths[1], norm_fn, 2, rngs=rngs)
    self.layer3 = Stage(block, widths[1], widths[2], norm_fn, 2, rngs=rngs)
    self.conv2 = _conv(widths[2], out_dim, 1, rngs, init=_ENCODER_INIT)

  def __call__(self, x: Array) -> Array:
    x = jax.nn.relu(_apply_norm(self.norm_fn, self.norm1, self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.conv2(x)


def correlation_pyramid(fmap1: Array, fmap2: Array, levels: int) -> list[Array]:
  """All-pairs correlation fmap1 . fmap2 / sqrt(D) and its 2x2 average-pooled coarser levels.

  fmap1, fmap2: [B, h, w, D]. Level l is [B*h*w, h_l, w_l, 1]: one image per query pixel of fmap1,
  the layout `resample.sample_pixels` samples. Pooling floors odd sizes, as avg_pool2d does.
  """
  b, h, w, d = fmap1.shape
  corr = jnp.einsum("bijd,bkld->bijkl", fmap1, fmap2) / jnp.sqrt(jnp.float32(d))
  level = corr.reshape(b * h * w, h, w, 1)
  pyramid = [level]
  for _ in range(levels - 1):
    n, hl, wl, _ = level.shape
    hl2, wl2 = hl // 2, wl // 2
    level = level[:, :2 * hl2, :2 * wl2].reshape(n, hl2, 2, wl2, 2, 1).mean(axis=(2, 4))
    pyramid.append(level)
  return pyramid


def correlation_lookup(pyramid: list[Array], coords: Array, radius: int) -> Array:
  """Samples a (2r+1)^2 window around `coords` / 2^l on every level (bilinear, zeros outside).

  coords: [B, h, w, 2] (x, y) in 1/8-resolution pixels -> [B, h, w, levels * (2r+1)^2].
  Channel order follows the official lookup, whose window is transposed: for window index (i, j)
  the x offset is i - r and the y offset j - r, so x varies along the slow axis.
  """
  b, h, w, _ = coords.shape
  centre = coords.reshape(b * h * w, 1, 1, 2)
  offsets = jnp.arange(-radius, radius + 1, dtype=coords.dtype)
  out = []
  for lvl, volume in enumerate(pyramid):
    c = centre / (2 ** lvl)
    x = c[..., 0] + offsets[:, None]   # [N, 2r+1 (i), 1] -> broadcast over j
    y = c[..., 1] + offsets[None, :]   # [N, 1, 2r+1 (j)]
    x, y = jnp.broadcast_arrays(x, y)
    window = resample.sample_pixels(volume, x, y)  # [N, 2r+1, 2r+1, 1]
    out.append(window.reshape(b, h, w, -1))
  return jnp.concatenate(out, axis=-1)


class Encoded(NamedTuple):
  """What the encoders give the refinement loop (all at 1/8 resolution, NHWC)."""
  fmap1: Array  # [B, h, w, D] features of image1
  fmap2: Array  # [B, h, w, D] features of image2
  net: Array    # [B, h, w, hidden] initial GRU state, tanh of the context split
  inp: Array    # [B, h, w, context] context features, relu of the split


class RAFT(nnx.Module):
  """RAFT (`small=False`: raft-things/sintel/kitti weights; `small=True`: raft-small)."""

  def __init__(self, small: bool = False, *, rngs: nnx.Rngs):
    self.small = small
    d = dims(small)
    self.fnet = Encoder(d.feature, "instance", small, rngs=rngs)
    self.cnet = Encoder(d.hidden + d.context, "none" if small else "batch", small, rngs=rngs)
    self.update_block = UpdateBlock(small, rngs=rngs)

  def encode(self, image1: Array, image2: Array) -> Encoded:
    """image1, image2: [B, H, W, 3] in [0, 1] (H, W multiples of 8)."""
    d = dims(self.small)
    b = image1.shape[0]
    x1, x2 = normalize_image(image1), normalize_image(image2)
    # One fnet pass over both images (the official batch of 2B); instance norm keeps them apart.
    fmaps = self.fnet(jnp.concatenate([x1, x2], axis=0))
    context = self.cnet(x1)
    return Encoded(fmaps[:b], fmaps[b:], jnp.tanh(context[..., :d.hidden]),
                   jax.nn.relu(context[..., d.hidden:]))

  def upsample(self, flow: Array, net: Array) -> Array:
    """1/8-resolution flow [B, h, w, 2] -> full-resolution [B, 8h, 8w, 2] (pixels)."""
    if self.small:
      return bilinear_upsample8(flow)
    return convex_upsample(flow, self.update_block.upsample_mask(net))

  def __call__(self, image1: Array, image2: Array, iters: int = 12, all_predictions: bool = False,
               flow_init: Array | None = None) -> tuple[Array, Array]:
    """Flow from image1 to image2.

    image1, image2: [B, H, W, 3] in [0, 1], H and W multiples of 8 and >= 128.
    iters: refinement iterations (static). flow_init: optional [B, H/8, W/8, 2] warm start.
    Returns (flow_low [B, H/8, W/8, 2], flow_up [B, H, W, 2]) after the last iteration, or with
    `all_predictions` both stacked over iterations: [iters, B, ...] (the training-mode outputs).
    """
    b, h, w, _ = image1.shape
    if h % 8 or w % 8 or h < MIN_SIZE or w < MIN_SIZE:
      raise ValueError(f"RAFT needs H and W to be multiples of 8 and >= {MIN_SIZE}; got {h}x{w} "
                       "(the FlowEstimator from `build` pads to a multiple of 8 for you)")
    if image2.shape != image1.shape:
      raise ValueError(f"RAFT images differ in shape: {image1.shape} vs {image2.shape}")
    d = dims(self.small)
    enc = self.encode(image1, image2)
    pyramid = correlation_pyramid(enc.fmap1, enc.fmap2, d.levels)
    coords0 = jnp.broadcast_to(resample.pixel_grid(h // 8, w // 8)[None], (b, h // 8, w // 8, 2))
    coords1 = coords0 if flow_init is None else coords0 + flow_init

    def step(carry, _):
      net, coords1 = carry
      coords1 = jax.lax.stop_gradient(coords1)  # the official coords1.detach()
      corr = correlation_lookup(pyramid, coords1, d.radius)
      net, delta = self.update_block(net, enc.inp, corr, coords1 - coords0)
      coords1 = coords1 + delta
      out = None
      if all_predictions:
        flow = coords1 - coords0
        out = (flow, self.upsample(flow, net))
      return (net, coords1), out

    (net, coords1), stacked = jax.lax.scan(step, (enc.net, coords1), None, length=iters)
    if all_predictions:
      return stacked
    flow = coords1 - coords0
    return flow, self.upsample(flow, net)


@functools.lru_cache(maxsize=2)
def _abstract_split(small: bool):
  return nnx.split(nnx.eval_shape(lambda: RAFT(small, rngs=nnx.Rngs(0))))


def abstract_model(small: bool) -> RAFT:
  """The model with shapes only (no weights drawn): for conversion and loading."""
  graphdef, state = _abstract_split(small)
  return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))


def variable_shapes(small: bool) -> dict[tuple, tuple]:
  """Flattened pure-dict path -> shape of every variable (params and batch-norm statistics)."""
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(_abstract_split(small)[1]))
  return {k: tuple(v.shape) for k, v in flat.items()}


def model_from_params(params, small: bool) -> RAFT:
  """A RAFT holding `params` (the pure dict `magplus_jax.ports.raft.convert_state_dict` makes)."""
  graphdef, state = nnx.split(abstract_model(small))
  name = lambda k: "/".join(map(str, k))
  check_state_dict({name(k): v for k, v in traverse_util.flatten_dict(params).items()},
                   {name(k): v for k, v in variable_shapes(small).items()},
                   what=f"RAFT ({'small' if small else 'full'}) params")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def load(ckpt_dir: str, small: bool) -> RAFT:
  """The RAFT stored in `ckpt_dir` (written by `python -m magplus_jax.ports.raft`).

  `nnx.split(load(...))` gives (graphdef, state) for jitted pure use. Refuses a checkpoint of the
  other size (or of another model) with a CheckpointMismatchError naming both.
  """
  params, _ = load_pretrained(ckpt_dir, model=model_name(small))
  return model_from_params(params, small)


def model_name(small: bool) -> str:
  return "raft_small" if small else "raft"


def pad_to_multiple_of_8(image: Array) -> tuple[Array, tuple[int, int, int, int]]:
  """Edge-replicate padding split evenly between both sides (the official InputPadder 'sintel'
  mode). Returns the padded [B, H', W', C] and (top, bottom, left, right)."""
  _, h, w, _ = image.shape
  ph, pw = -h % 8, -w % 8
  pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
  if ph or pw:
    image = jnp.pad(image, ((0, 0), pads[:2], pads[2:], (0, 0)), mode="edge")
  return image, pads


def make_flow_fn(graphdef, iters: int):
  """flow_fn(state, image1, image2) -> [B, H, W, 2]: pads to a multiple of 8, runs RAFT, crops.

  Only the network is jitted (once per padded shape), so frames of any size that pad to the same
  shape share one compilation; the function also works inside an outer jit / grad / vmap.
  """

  @jax.jit
  def network(state, image1: Array, image2: Array) -> Array:
    return nnx.merge(graphdef, state)(image1, image2, iters=iters)[1]

  def flow_fn(state, image1: Array, image2: Array) -> Array:
    if image1.ndim != 4 or image1.shape[-1] != 3 or image2.shape != image1.shape:
      raise ValueError("RAFT flow_fn expects two [B, H, W, 3] images of one shape; got "
                       f"{image1.shape} and {image2.shape}")
    _, h, w, _ = image1.shape
    if h < MIN_SIZE or w < MIN_SIZE:
      raise ValueError(f"RAFT needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels; got {h}x{w} "
                       "(its 4-level correlation pyramid runs at 1/8 resolution). Resize the frames "
                       "up or use config.flow.name='pyramid_lk'")
    im1, (top, _, left, _) = pad_to_multiple_of_8(image1)
    im2, _ = pad_to_multiple_of_8(image2)
    return network(state, im1, im2)[:, top:top + h, left:left + w]

  return flow_fn


def build(flow_config) -> FlowEstimator:
  """The FlowEstimator for config.flow (fields: name 'raft' | 'raft_small', checkpoint, iters=12).

  Images of any size >= 128x128 are accepted: they are edge-padded symmetrically to a multiple of 8
  (InputPadder 'sintel' mode) and the flow is cropped back. The estimator's params are the model's
  nnx.State (weights and batch-norm statistics), a pytree like any other.
  """
  small = flow_config.name == "raft_small"
  checkpoint = flow_config.get("checkpoint", None) or ""
  if not checkpoint:
    weights = "raft-small.pth" if small else "raft-things.pth"
    raise ValueError(
        f"config.flow.name={flow_config.name!r} needs converted RAFT weights, but "
        "config.flow.checkpoint is empty. Get the official weights (princeton-vl/RAFT, "
        f"download_models.sh -> models/{weights}) and convert them with `python -m "
        f"magplus_jax.ports.raft models/{weights} OUT_DIR{' --small' if small else ''}`, then set "
        "config.flow.checkpoint=OUT_DIR; or use the weight-free config.flow.name='pyramid_lk'")
  iters = int(flow_config.get("iters", 12))
  if iters < 1:
    raise ValueError(f"config.flow.iters must be >= 1; got {iters}")
  graphdef, state = nnx.split(load(checkpoint, small))
  return FlowEstimator(flow_config.name, state, make_flow_fn(graphdef, iters))
