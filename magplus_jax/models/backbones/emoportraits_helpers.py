"""EMOPortraits' auxiliary networks and source masks: the ResNets, the head-pose regressor, masks.

Part of the EMOPortraits port (github.com/neeek2303/EMOPortraits @ 7cb86416, **CC BY-NC-SA 4.0**;
this port and weights converted from it inherit the licence).

* `ResNet`: torchvision's ResNet-18/50 layout (names conv1, bn1, layerN.i.*, downsample), with
  BatchNorm (eval) or GroupNorm(32): EMOPortraits' embedders swap every BatchNorm for a GroupNorm
  and weight-standardise (with a bias) the convs that follow one inside a block.
* `HeadPoseNet`: torchvision resnet18(num_classes=9) on a 128 px bilinear resize, no input
  normalisation; 9 outputs = scale (3), yaw/pitch/roll, translation (3) -> `pose_matrix`.
* Source masks (`mask` in the backbone config). EMOPortraits multiplies the source by a head mask
  before encoding it and was trained on such masked sources, so the choice matters:
    - "bisenet": the official mask (models/backbones/bisenet.py, converter ports/bisenet.py):
      BiSeNet's 19 CelebAMask-HQ labels, keeping face, ears, hair, hat and neck. Needs the
      face-parsing checkpoint (79999_iter.pth from EMOPortraits' repos.zip).
    - "facebox": no network weights: scikit-image's LBP face detector (the one data_pipelines'
      face_crop uses) finds the face box on the host, and the mask is an ellipse around it grown
      to cover forehead, hair and chin (`facebox_mask`). Background inside the ellipse stays and
      long hair / the neck outside it is cut, so it is visibly worse at the borders than BiSeNet.
      No face found: the fixed ellipse below, with a warning.
    - "ellipse": a fixed head-shaped ellipse for pre-aligned crops (face centred, as the
      official 512 px crops are); same caveats as "facebox", plus no adaptation to the face.
    - "none": no mask; the model then encodes the background as part of the head, which is
      outside its training distribution.
  A face-mesh mask (MediaPipe, the other official option) is not offered: mediapipe is not
  installed in this environment.
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.backbones.emoportraits_volume import GroupNorm, SNConv, WSConv, conv
from magplus_jax.models.resample import resize_bilinear

Array = jax.Array
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_normalize(x: Array) -> Array:
  return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)


def max_pool_3x3_s2(x: Array) -> Array:
  """torch MaxPool2d(3, stride 2, padding 1) of [B, H, W, C] (padding never wins the max)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


# ----------------------------------------------------------------------------- ResNet

def _norm(kind: str, c: int, rngs: nnx.Rngs):
  if kind == "bn":
    return nnx.BatchNorm(c, use_running_average=True, epsilon=1e-5, rngs=rngs)
  return GroupNorm(c)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int, norm: str, *, rngs: nnx.Rngs):
    gn = norm == "gn"
    first = SNConv if gn else nnx.Conv
    self.conv1 = conv(first, 2, cin, planes, 3, stride=stride, bias=False, rngs=rngs)
    self.bn1 = _norm(norm, planes, rngs)
    self.conv2 = conv(WSConv if gn else nnx.Conv, 2, planes, planes, 3, bias=gn, rngs=rngs)
    self.bn2 = _norm(norm, planes, rngs)
    down = stride != 1 or cin != planes
    self.downsample_conv = (conv(first, 2, cin, planes, 1, stride=stride, bias=False, rngs=rngs)
                            if down else None)
    self.downsample_norm = _norm(norm, planes, rngs) if down else None

  def __call__(self, x: Array) -> Array:
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    s = x if self.downsample_conv is None else self.downsample_norm(self.downsample_conv(x))
    return jax.nn.relu(h + s)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int, norm: str, *, rngs: nnx.Rngs):
    gn = norm == "gn"
    first, ws = (SNConv, WSConv) if gn else (nnx.Conv, nnx.Conv)
    out = planes * 4
    self.conv1 = conv(first, 2, cin, planes, 1, bias=False, rngs=rngs)
    self.bn1 = _norm(norm, planes, rngs)
    self.conv2 = conv(ws, 2, planes, planes, 3, stride=stride, bias=gn, rngs=rngs)
    self.bn2 = _norm(norm, planes, rngs)
    self.conv3 = conv(ws, 2, planes, out, 1, bias=gn, rngs=rngs)
    self.bn3 = _norm(norm, out, rngs)
    down = stride != 1 or cin != out
    self.downsample_conv = (conv(first, 2, cin, out, 1, stride=stride, bias=False, rngs=rngs)
                            if down else None)
    self.downsample_norm = _norm(norm, out, rngs) if down else None

  def __call__(self, x: Array) -> Array:
    h = jax.nn.relu(self.bn1(self.conv1(x)))
    h = jax.nn.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    s = x if self.downsample_conv is None else self.downsample_norm(self.downsample_conv(x))
    return jax.nn.relu(h + s)


class ResNet(nnx.Module):
  """torchvision ResNet trunk (stem + layer1..4); the heads are the owners' business.

  depth 18 or 50; norm "bn" (plain torchvision, eval statistics) or "gn" (EMOPortraits' embedders:
  GroupNorm, and spectral-norm / weight-standardised convs as the checkpoint stores them).
  """

  def __init__(self, depth: int, norm: str, *, rngs: nnx.Rngs):
    block, counts = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[depth]
    self.conv1 = conv(SNConv if norm == "gn" else nnx.Conv, 2, 3, 64, 7, stride=2, bias=False,
                      rngs=rngs)
    self.bn1 = _norm(norm, 64, rngs)
    cin = 64
    layers = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, norm, rngs=rngs))
        cin = planes * block.expansion
      layers.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.out_channels = cin

  def features(self, x: Array) -> list[Array]:
    """[B, H, W, 3] -> the outputs of layer1..4 (strides 4, 8, 16, 32)."""
    x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
    outs = []
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      for blk in layer:
        x = blk(x)
      outs.append(x)
    return outs

  def __call__(self, x: Array) -> Array:
    return self.features(x)[-1]


# ----------------------------------------------------------------------------- head pose

def pose_matrix(scale: Array, rotation: Array, translation: Array) -> Array:
  """theta = S @ R @ T, [B, 4, 4], from [B, 3] scale, (yaw, pitch, roll) and translation.

  R = Rz(yaw) Ry(pitch) Rx(roll); the angles are clamped to [-pi/2, pi] as in the official code.
  """
  yaw, pitch, roll = jnp.moveaxis(jnp.clip(rotation, -math.pi / 2, math.pi), -1, 0)
  cy, sy, cp, sp, cr, sr = (jnp.cos(yaw), jnp.sin(yaw), jnp.cos(pitch), jnp.sin(pitch),
                            jnp.cos(roll), jnp.sin(roll))
  zero, one = jnp.zeros_like(yaw), jnp.ones_like(yaw)
  rot = jnp.stack([
      jnp.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr, zero], -1),
      jnp.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr, zero], -1),
      jnp.stack([-sp, cp * sr, cp * cr, zero], -1),
      jnp.stack([zero, zero, zero, one], -1)], -2)
  eye = jnp.eye(4, dtype=scale.dtype)
  s = eye * jnp.concatenate([scale, jnp.ones_like(scale[..., :1])], -1)[..., None, :]
  t = jnp.broadcast_to(eye, rot.shape).at[..., :3, 3].set(translation)
  return s @ rot @ t


class HeadPoseNet(nnx.Module):
  """The released head-pose regressor (torchvision resnet18, fc 512 -> 9, BatchNorm in eval)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.net = ResNet(18, "bn", rngs=rngs)
    self.fc = nnx.Linear(512, 9, rngs=rngs)

  def __call__(self, image: Array) -> dict[str, Array]:
    """image: [B, H, W, 3] in [0, 1] -> theta [B, 4, 4] and its scale / rotation / translation."""
    if image.shape[1:3] != (128, 128):
      image = resize_bilinear(image, (128, 128))
    out = self.fc(self.net(image).mean(axis=(1, 2)))
    scale, rotation, translation = out[:, 0:3], out[:, 3:6], out[:, 6:9]
    return dict(theta=pose_matrix(scale, rotation, translation), scale=scale, rotation=rotation,
                translation=translation)


# ----------------------------------------------------------------------------- face masks

def ellipse_mask(height: int, width: int, center=(0.5, 0.47), axes=(0.36, 0.47)) -> np.ndarray:
  """[H, W] binary head-shaped ellipse (centre and semi-axes as fractions of width, height)."""
  y, x = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                     indexing="ij")
  r = ((x - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2
  return (r <= 1.0).astype(np.float32)


def facebox_mask(image: np.ndarray) -> np.ndarray:
  """[H, W, 3] in [0, 1] -> [H, W] binary ellipse around the detected face (largest face).

  The LBP box spans roughly eyebrows to mouth; the ellipse is centred a tenth of the box above its
  centre and reaches 0.85 box widths sideways and 1.2 box heights up and down, which covers
  forehead, hair on top and the chin of a frontal face. No face: `ellipse_mask` and a warning.
  """
  from data_pipelines.face_crop import detect_faces  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  boxes = detect_faces(np.clip(np.asarray(image, np.float32), 0.0, 1.0))
  if not boxes:
    warnings.warn("EMOPortraits facebox mask: no face detected; using the fixed centred ellipse",
                  stacklevel=2)
    return ellipse_mask(h, w)
  top, left, bh, bw = boxes[0]
  cx, cy = (left + bw / 2.0) / w, (top + bh / 2.0 - 0.1 * bh) / h
  return ellipse_mask(h, w, center=(cx, cy), axes=(0.85 * bw / w, 1.2 * bh / h))
