"""RAFT's refinement step (motion encoder, ConvGRU / SepConvGRU, flow head, upsampling mask) and
its x8 upsampling, in Flax NNX: the part of princeton-vl/RAFT @ 2888e15a that runs once per
iteration. raft.py holds the encoders, the correlation pyramid and the iteration itself; the two
share `conv` (torch's symmetric k // 2 padding) and the widths in `dims`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from magplus_jax.models import resample

Array = jax.Array

Dims = NamedTuple("Dims", [("hidden", int), ("context", int), ("feature", int), ("radius", int),
                           ("levels", int)])


def dims(small: bool) -> Dims:
  """GRU state, context and feature widths; correlation radius and pyramid levels."""
  return Dims(96, 64, 128, 3, 4) if small else Dims(128, 128, 256, 4, 4)


def conv(cin: int, cout: int, kernel, rngs: nnx.Rngs, stride: int = 1,
          init=nnx.initializers.lecun_normal()) -> nnx.Conv:
  """A conv with torch's symmetric zero padding of k // 2 (every RAFT conv pads this way)."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  return nnx.Conv(cin, cout, (kh, kw), strides=stride,
                  padding=[(kh // 2, kh // 2), (kw // 2, kw // 2)], kernel_init=init, rngs=rngs)


class MotionEncoder(nnx.Module):
  """Correlation + current flow -> motion features (the raw flow rides along as the last 2 channels)."""

  def __init__(self, corr_planes: int, small: bool, *, rngs: nnx.Rngs):
    if small:
      self.convc1 = conv(corr_planes, 96, 1, rngs)
      self.convc2 = None
      self.convf1 = conv(2, 64, 7, rngs)
      self.convf2 = conv(64, 32, 3, rngs)
      self.conv = conv(128, 80, 3, rngs)
    else:
      self.convc1 = conv(corr_planes, 256, 1, rngs)
      self.convc2 = conv(256, 192, 3, rngs)
      self.convf1 = conv(2, 128, 7, rngs)
      self.convf2 = conv(128, 64, 3, rngs)
      self.conv = conv(256, 126, 3, rngs)

  def __call__(self, flow: Array, corr: Array) -> Array:
    cor = jax.nn.relu(self.convc1(corr))
    if self.convc2 is not None:
      cor = jax.nn.relu(self.convc2(cor))
    flo = jax.nn.relu(self.convf2(jax.nn.relu(self.convf1(flow))))
    out = jax.nn.relu(self.conv(jnp.concatenate([cor, flo], axis=-1)))
    return jnp.concatenate([out, flow], axis=-1)


def _gru_update(convz, convr, convq, h: Array, x: Array) -> Array:
  hx = jnp.concatenate([h, x], axis=-1)
  z = jax.nn.sigmoid(convz(hx))
  r = jax.nn.sigmoid(convr(hx))
  q = jnp.tanh(convq(jnp.concatenate([r * h, x], axis=-1)))
  return (1.0 - z) * h + z * q


class ConvGRU(nnx.Module):
  """3x3 convolutional GRU (small model)."""

  def __init__(self, hidden: int, inputs: int, *, rngs: nnx.Rngs):
    self.convz = conv(hidden + inputs, hidden, 3, rngs)
    self.convr = conv(hidden + inputs, hidden, 3, rngs)
    self.convq = conv(hidden + inputs, hidden, 3, rngs)

  def __call__(self, h: Array, x: Array) -> Array:
    return _gru_update(self.convz, self.convr, self.convq, h, x)


class SepConvGRU(nnx.Module):
  """A 1x5 (horizontal) GRU update followed by a 5x1 (vertical) one (full model)."""

  def __init__(self, hidden: int, inputs: int, *, rngs: nnx.Rngs):
    c = hidden + inputs
    self.convz1 = conv(c, hidden, (1, 5), rngs)
    self.convr1 = conv(c, hidden, (1, 5), rngs)
    self.convq1 = conv(c, hidden, (1, 5), rngs)
    self.convz2 = conv(c, hidden, (5, 1), rngs)
    self.convr2 = conv(c, hidden, (5, 1), rngs)
    self.convq2 = conv(c, hidden, (5, 1), rngs)

  def __call__(self, h: Array, x: Array) -> Array:
    h = _gru_update(self.convz1, self.convr1, self.convq1, h, x)
    return _gru_update(self.convz2, self.convr2, self.convq2, h, x)


class FlowHead(nnx.Module):
  def __init__(self, cin: int, hidden: int, *, rngs: nnx.Rngs):
    self.conv1 = conv(cin, hidden, 3, rngs)
    self.conv2 = conv(hidden, 2, 3, rngs)

  def __call__(self, x: Array) -> Array:
    return self.conv2(jax.nn.relu(self.conv1(x)))


class UpdateBlock(nnx.Module):
  """One refinement step: (GRU state, context, correlation, flow) -> (new state, flow increment).

  The full model also predicts the convex-upsampling mask from the state (`upsample_mask`).
  """

  def __init__(self, small: bool, *, rngs: nnx.Rngs):
    d = dims(small)
    corr_planes = d.levels * (2 * d.radius + 1) ** 2
    self.encoder = MotionEncoder(corr_planes, small, rngs=rngs)
    if small:
      self.gru = ConvGRU(d.hidden, 82 + 64, rngs=rngs)
      self.flow_head = FlowHead(d.hidden, 128, rngs=rngs)
      self.mask_conv1 = None
      self.mask_conv2 = None
    else:
      self.gru = SepConvGRU(d.hidden, 128 + d.hidden, rngs=rngs)
      self.flow_head = FlowHead(d.hidden, 256, rngs=rngs)
      self.mask_conv1 = conv(128, 256, 3, rngs)
      self.mask_conv2 = conv(256, 64 * 9, 1, rngs)

  def __call__(self, net: Array, inp: Array, corr: Array, flow: Array) -> tuple[Array, Array]:
    motion = self.encoder(flow, corr)
    net = self.gru(net, jnp.concatenate([inp, motion], axis=-1))
    return net, self.flow_head(net)

  def upsample_mask(self, net: Array) -> Array:
    """[B, h, w, 576] convex-combination logits, already scaled by 0.25 as in the official code."""
    if self.mask_conv1 is None:
      raise ValueError("the small RAFT has no upsampling mask (it upsamples bilinearly)")
    return 0.25 * self.mask_conv2(jax.nn.relu(self.mask_conv1(net)))


def convex_upsample(flow: Array, mask: Array) -> Array:
  """x8 upsampling as a softmax-weighted combination of each pixel's 3x3 neighbourhood.

  flow: [B, h, w, 2] at 1/8 resolution, mask: [B, h, w, 576] with channel k*64 + a*8 + b for
  neighbour k (row-major 3x3) and sub-pixel (row a, column b). Returns [B, 8h, 8w, 2] in pixels.
  """
  b, h, w, _ = flow.shape
  weights = jax.nn.softmax(mask.reshape(b, h, w, 9, 8, 8), axis=3)
  padded = jnp.pad(8.0 * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
  neighbours = jnp.stack([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)],
                         axis=3)  # [B, h, w, 9, 2]
  up = jnp.einsum("bhwkyx,bhwkc->bhywxc", weights, neighbours)
  return up.reshape(b, 8 * h, 8 * w, 2)


def bilinear_upsample8(flow: Array) -> Array:
  """The small model's x8 upsampling: 8 * bilinear resize with align_corners=True."""
  _, h, w, _ = flow.shape
  return 8.0 * resample.resize_bilinear(flow, (8 * h, 8 * w), align_corners=True)
