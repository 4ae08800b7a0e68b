"""VGG-19 features (Simonyan & Zisserman 2015) for FOMM's perceptual loss, frozen.

FOMM's official Vgg19 (modules/model.py) cuts torchvision's `vgg19().features` after relu1_1,
relu2_1, relu3_1, relu4_1 and relu5_1 and normalises the input with the ImageNet mean and std;
this is the same network in NHWC. Nothing ships the ImageNet weights offline, so they come from a
directory the user converts once from torchvision's `vgg19-dcbb9e9d.pth`:

    python -m magplus_jax.ports.vgg19 vgg19-dcbb9e9d.pth OUT_DIR

`load(dir)` returns (module, params); `features(params, x)` is pure and jittable. The convolutions
keep torchvision's indices in `TORCH_CONV_INDEX` so the converter maps names mechanically.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from magplus_jax.checkpointing import load_pretrained

Array = jax.Array

MODEL_NAME = "vgg19"
# torchvision vgg19().features: the 13 convolutions up to relu5_1 (index 29), their (in, out)
# widths, and after which of them a 2x2 max pool follows.
TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
WIDTHS = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
          (256, 256), (256, 512), (512, 512), (512, 512), (512, 512), (512, 512))
POOL_AFTER = (1, 3, 7, 11)
FEATURE_AFTER = (0, 2, 4, 8, 12)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class VGG19Features(nnx.Module):
  """x [B, H, W, 3] in [0, 1] -> the five feature maps [B, H / 2**i, W / 2**i, C_i]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.features = nnx.List([nnx.Conv(i, o, (3, 3), padding=[(1, 1), (1, 1)], rngs=rngs)
                              for i, o in WIDTHS])

  def __call__(self, x: Array) -> list[Array]:
    x = (x - jnp.asarray(MEAN, x.dtype)) / jnp.asarray(STD, x.dtype)
    out = []
    for i, conv in enumerate(self.features):
      x = jax.nn.relu(conv(x))
      if i in FEATURE_AFTER:
        out.append(x)
      if i == FEATURE_AFTER[-1]:
        break
      if i in POOL_AFTER:
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    return out


def abstract_model() -> VGG19Features:
  return nnx.eval_shape(lambda: VGG19Features(rngs=nnx.Rngs(0)))


def load(ckpt_dir: str):
  """(graphdef, params: nnx.State) of a converted directory; refuses another model's directory."""
  state, _ = load_pretrained(ckpt_dir, model=MODEL_NAME)
  graphdef, params = nnx.split(abstract_model())
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, nnx.restore_int_paths(state)))
  return graphdef, params


def features(graphdef, params, x: Array) -> list[Array]:
  """The five relu feature maps of x [B, H, W, 3] in [0, 1] under `params` (pure, jittable)."""
  return nnx.merge(graphdef, params)(x)
