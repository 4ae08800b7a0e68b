"""Converter for the BiSeNet face parser that EMOPortraits uses for its source mask.

    python -m magplus_jax.ports.bisenet 79999_iter.pth OUT_DIR

The file is face-parsing.PyTorch's `res/cp/79999_iter.pth`
(github.com/zllrunning/face-parsing.PyTorch, MIT), shipped by EMOPortraits in `repos.zip` as
`repos/face_par_off/res/cp/79999_iter.pth`: a flat state dict of `BiSeNet(n_classes=19)`.
Everything the main output needs is copied (conv kernels transposed to Flax layout, BatchNorm
affine and running statistics as they are); the auxiliary training heads `conv_out16.*` / `conv_out32.*` and `num_batches_tracked` are ignored. A missing key
or a wrong shape raises CheckpointMismatchError naming it (and the unexpected keys, which tell
which file was given instead).
"""
from __future__ import annotations

import argparse
import functools
import sys

from flax import nnx

from magplus_jax.ports.common import CheckpointMismatchError, load_torch_file
from magplus_jax.ports.emoportraits import (RESNET_RULES, convert_with_plan, expected_spec as _spec,
                                            make_plan, unwrap)

MODEL_NAME = "bisenet_faceparsing"
# Flax module path -> official name (the context path lives under `cp.`, the fusion under `ffm.`).
RULES = [(r"^(resnet|arm16|arm32|conv_head16|conv_head32|conv_avg)", r"cp.\1"),
         (r"^ffm_(convblk|conv1|conv2)", r"ffm.\1")] + RESNET_RULES
# Keys of the official file that inference does not use.
IGNORED_PREFIXES = ("conv_out16.", "conv_out32.")


@functools.lru_cache(maxsize=1)
def abstract_bisenet():
  from magplus_jax.models.backbones.bisenet import BiSeNet  # pylint: disable=g-import-not-at-top
  return nnx.eval_shape(lambda: BiSeNet(rngs=nnx.Rngs(0)))


def plan():
  return make_plan(abstract_bisenet(), RULES)


def expected_spec() -> dict:
  """Official name -> torch shape of every key the conversion reads."""
  return _spec(plan())


def convert_state_dict(sd: dict) -> dict:
  """face-parsing.PyTorch BiSeNet state dict (numpy) -> pure-dict params of `BiSeNet`."""
  sd = {k: v for k, v in unwrap(sd).items() if not k.startswith(IGNORED_PREFIXES)}
  return convert_with_plan(sd, plan(), "BiSeNet face-parsing checkpoint")


def convert_file(checkpoint: str, out_dir: str) -> str:
  """The CLI's work: read, convert, save with `save_pretrained`. Returns out_dir."""
  from magplus_jax.checkpointing import save_pretrained  # pylint: disable=g-import-not-at-top
  sd = load_torch_file(checkpoint)
  if not isinstance(sd, dict):
    raise CheckpointMismatchError(f"{checkpoint!r} does not hold a state dict")
  return save_pretrained(out_dir, convert_state_dict(sd), model=MODEL_NAME,
                         config={"license": "MIT (face-parsing.PyTorch)"}, source=checkpoint)


def load(ckpt_dir: str) -> dict:
  """A converted directory -> BiSeNet params (pure dict, integer list keys restored)."""
  from magplus_jax.checkpointing import load_pretrained  # pylint: disable=g-import-not-at-top
  return nnx.restore_int_paths(load_pretrained(ckpt_dir, model=MODEL_NAME)[0])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("checkpoint", help="79999_iter.pth")
  ap.add_argument("out_dir")
  a = ap.parse_args(argv)
  print(convert_file(a.checkpoint, a.out_dir))


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(lambda: main(sys.argv[1:]), "magplus_jax.ports.bisenet")
