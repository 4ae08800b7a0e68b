"""BiSeNet face parsing, the source-face mask of EMOPortraits.

EMOPortraits removes the background of the source image before encoding it (it was trained on
matted crops), with the BiSeNet face parser of github.com/zllrunning/face-parsing.PyTorch (MIT),
whose `79999_iter.pth` it ships in its `repos.zip` as `repos/face_par_off/res/cp/79999_iter.pth`.
This is a Flax NNX re-implementation of that network's inference path; the converter is
magplus_jax/ports/bisenet.py.

Architecture (only the main output: the two auxiliary heads `conv_out16` / `conv_out32` serve
training and are ignored by the converter):
  context path: a torchvision-layout ResNet-18 (BatchNorm, eval) gives features at strides
    8, 16, 32; attention-refinement modules (3x3 ConvBNReLU, then a channel attention from the
    global mean) on the stride-16/32 features; the stride-32 branch plus a global-context vector
    is upsampled (nearest) to stride 16, refined, added to the stride-16 branch, upsampled to
    stride 8 and refined again;
  fusion: [stride-8 ResNet features, context] -> 1x1 ConvBNReLU -> x * (1 + channel attention);
  head: 3x3 ConvBNReLU -> 1x1 conv to 19 CelebAMask-HQ classes -> bilinear (align_corners=True)
    back to the input size.
Names follow the official state dict (`cp.resnet...`, `cp.arm16`, `ffm.convblk`, `conv_out`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.backbones.emoportraits_helpers import ResNet, imagenet_normalize
from magplus_jax.models.backbones.emoportraits_volume import conv
from magplus_jax.models.resample import resize_bilinear

Array = jax.Array

# CelebAMask-HQ labels: 0 background, 1 skin, 2/3 brows, 4/5 eyes, 6 glasses, 7/8 ears,
# 9 earring, 10 nose, 11 mouth, 12/13 lips, 14 neck, 15 necklace, 16 cloth, 17 hair, 18 hat.
# EMOPortraits keeps all but background, necklace and cloth: the head with hair, hat and neck.
KEEP_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18)
PARSE_SIZE = 512   # EMOPortraits parses at 512 px whatever the image size


class ConvBNReLU(nnx.Module):
  def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs):
    self.conv = conv(nnx.Conv, 2, cin, cout, k, bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class AttentionRefinement(nnx.Module):
  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.conv = ConvBNReLU(cin, cout, 3, rngs=rngs)
    self.conv_atten = conv(nnx.Conv, 2, cout, cout, 1, bias=False, rngs=rngs)
    self.bn_atten = nnx.BatchNorm(cout, use_running_average=True, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    feat = self.conv(x)
    att = self.bn_atten(self.conv_atten(feat.mean(axis=(1, 2), keepdims=True)))
    return feat * jax.nn.sigmoid(att)


class BiSeNetOutput(nnx.Module):
  def __init__(self, cin: int, mid: int, n_classes: int, *, rngs: nnx.Rngs):
    self.conv = ConvBNReLU(cin, mid, 3, rngs=rngs)
    self.conv_out = conv(nnx.Conv, 2, mid, n_classes, 1, bias=False, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.conv_out(self.conv(x))


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """torch F.interpolate(mode="nearest", size=...) of [B, H, W, C]: source row floor(i * H / h)."""
  h, w = x.shape[1:3]
  yi = (np.arange(size[0]) * h) // size[0]
  xi = (np.arange(size[1]) * w) // size[1]
  return x[:, yi][:, :, xi]


class BiSeNet(nnx.Module):
  """Face parser: ImageNet-normalised [B, H, W, 3] (H, W multiples of 32) -> [B, H, W, 19]."""

  def __init__(self, n_classes: int = 19, *, rngs: nnx.Rngs):
    self.resnet = ResNet(18, "bn", rngs=rngs)
    self.arm16 = AttentionRefinement(256, 128, rngs=rngs)
    self.arm32 = AttentionRefinement(512, 128, rngs=rngs)
    self.conv_head32 = ConvBNReLU(128, 128, 3, rngs=rngs)
    self.conv_head16 = ConvBNReLU(128, 128, 3, rngs=rngs)
    self.conv_avg = ConvBNReLU(512, 128, 1, rngs=rngs)
    self.ffm_convblk = ConvBNReLU(256, 256, 1, rngs=rngs)
    self.ffm_conv1 = conv(nnx.Conv, 2, 256, 64, 1, bias=False, rngs=rngs)
    self.ffm_conv2 = conv(nnx.Conv, 2, 64, 256, 1, bias=False, rngs=rngs)
    self.conv_out = BiSeNetOutput(256, 256, n_classes, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    h, w = x.shape[1:3]
    _, feat8, feat16, feat32 = self.resnet.features(x)
    context = self.conv_avg(feat32.mean(axis=(1, 2), keepdims=True))
    up32 = self.conv_head32(resize_nearest(self.arm32(feat32) + context, feat16.shape[1:3]))
    up16 = self.conv_head16(resize_nearest(self.arm16(feat16) + up32, feat8.shape[1:3]))
    feat = self.ffm_convblk(jnp.concatenate([feat8, up16], axis=-1))
    att = jax.nn.sigmoid(self.ffm_conv2(jax.nn.relu(self.ffm_conv1(
        feat.mean(axis=(1, 2), keepdims=True)))))
    logits = self.conv_out(feat * att + feat)
    return resize_bilinear(logits, (h, w), align_corners=True)

  def face_mask(self, image: Array) -> Array:
    """image [B, H, W, 3] in [0, 1] -> binary head mask [B, H, W, 1], as EMOPortraits makes it:
    normalise, resize to 512, parse, resize the logits back (bilinear), argmax, keep KEEP_LABELS."""
    h, w = image.shape[1:3]
    x = resize_bilinear(imagenet_normalize(image.astype(jnp.float32)), (PARSE_SIZE, PARSE_SIZE))
    logits = resize_bilinear(self(x), (h, w))
    keep = jnp.isin(jnp.argmax(logits, axis=-1), jnp.asarray(KEEP_LABELS))
    return keep[..., None].astype(image.dtype)
