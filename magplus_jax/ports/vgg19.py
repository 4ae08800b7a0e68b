"""Converts torchvision's VGG-19 ImageNet weights to the Flax VGG19Features of models/vgg.py.

    python -m magplus_jax.ports.vgg19 vgg19-dcbb9e9d.pth OUT_DIR

The input is torchvision's state dict for `models.vgg19()` (what FOMM's perceptual loss loads with
`pretrained=True`); only `features.{0..28}` (the convolutions up to relu5_1) are kept, the rest
(later convolutions, the classifier) is ignored. The output directory is what
`config.fomm.loss.vgg_checkpoint` takes (with `config.fomm.loss.reconstruction="vgg19"`).
"""
from __future__ import annotations

import argparse
import re
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from magplus_jax.checkpointing import save_pretrained
from magplus_jax.models import vgg
from magplus_jax.ports.common import CheckpointMismatchError, load_torch_file, strip_prefix
from magplus_jax.ports.fomm import convert_with_map, torch_layout_map


def _rename(module: str) -> str:
  # Flax features.k (k-th convolution) -> torch features.<its index in vgg19().features>
  return re.sub(r"^features\.(\d+)$", lambda m: f"features.{vgg.TORCH_CONV_INDEX[int(m[1])]}",
                module)


def convert(sd: Mapping[str, np.ndarray]) -> dict:
  """torchvision vgg19 state dict -> the Flax pure dict of VGG19Features."""
  if not isinstance(sd, Mapping):
    raise CheckpointMismatchError(f"VGG-19 checkpoint: expected a state dict, got "
                                  f"{type(sd).__name__}")
  sd = strip_prefix(dict(sd), "module.")
  wanted = {f"features.{i}.{leaf}" for i in vgg.TORCH_CONV_INDEX for leaf in ("weight", "bias")}
  kept = {k: v for k, v in sd.items() if k in wanted}
  template = nnx.to_pure_dict(nnx.state(vgg.abstract_model()))
  return convert_with_map(kept, torch_layout_map(template, _rename), what="VGG-19 features")


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="torchvision's vgg19 weights, e.g. vgg19-dcbb9e9d.pth")
  parser.add_argument("out_dir", help="output directory (must not exist)")
  args = parser.parse_args(argv)
  params = convert(load_torch_file(args.checkpoint))
  return save_pretrained(args.out_dir, jax.tree.map(np.asarray, params), model=vgg.MODEL_NAME,
                         source=args.checkpoint)


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  print(run_cli(main, "magplus_jax.ports.vgg19"))
