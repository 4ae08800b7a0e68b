"""Converter for the official RAFT checkpoints (princeton-vl/RAFT: raft-things.pth, raft-small.pth, ...).

  python -m magplus_jax.ports.raft models/raft-things.pth OUT_DIR            # size from the keys
  python -m magplus_jax.ports.raft models/raft-small.pth OUT_DIR --small     # or say it

The official files are state dicts saved from `nn.DataParallel`, so every name carries a `module.`
prefix; it is stripped (files without it work too). The expected names and shapes are derived from
the Flax model itself (`torch_spec`), so a file of the other size, a truncated file or another model
fails with one CheckpointMismatchError naming the keys.

Name mapping (Flax path -> torch name): `blockN` -> `N`; a block's `downsample` conv ->
`downsample.0` and its `downsample_norm` -> `downsample.1`; `mask_conv1`/`mask_conv2` -> `mask.0`/
`mask.2`; conv `kernel` -> `weight` (transposed), BatchNorm `scale/bias/mean/var` ->
`weight/bias/running_mean/running_var`. In torch the downsample norm is registered twice (as
`norm3` / `norm4` and as `downsample.1`); both names are expected, and `downsample.1` is used
because torch's `load_state_dict` loads it last, so its values are the ones the network runs with.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Mapping

import numpy as np
from flax import traverse_util

from magplus_jax.checkpointing import save_pretrained
from magplus_jax.models.flow import raft
from magplus_jax.ports.common import (CheckpointMismatchError, check_state_dict, conv_kernel, load_torch_file,
                                      strip_prefix)

_RENAME = {"downsample": "downsample.0", "downsample_norm": "downsample.1",
           "mask_conv1": "mask.0", "mask_conv2": "mask.2", "block0": "0", "block1": "1"}
_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_name(path: tuple) -> str:
  *mods, leaf = path
  owner = mods[-1]
  if owner.startswith("conv") or owner in ("downsample", "mask_conv1", "mask_conv2"):
    leaf = {"kernel": "weight", "bias": "bias"}[leaf]
  else:  # a BatchNorm
    leaf = _BN_LEAF[leaf]
  return ".".join([_RENAME.get(m, m) for m in mods] + [leaf])


def _alias(path: tuple, block_keys) -> str | None:
  """torch's second name of a downsample norm: `norm3` in a ResidualBlock, `norm4` in a Bottleneck."""
  if "downsample_norm" not in path:
    return None
  i = path.index("downsample_norm")
  norm = "norm4" if "conv3" in block_keys else "norm3"
  return _torch_name(path[:i] + (norm,) + path[i + 1:])


@functools.lru_cache(maxsize=2)
def _plan(small: bool) -> tuple[tuple[tuple, str, str | None, tuple], ...]:
  """(flax path, torch name, torch alias or None, torch shape) for every variable of the model."""
  leaves = raft.variable_shapes(small)
  plan = []
  for path, shape in leaves.items():
    parent = path[:-2]  # the block holding this layer
    siblings = {p[len(parent)] for p in leaves if len(p) > len(parent) and p[:len(parent)] == parent}
    torch_shape = (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else shape
    plan.append((path, _torch_name(path), _alias(path, siblings), torch_shape))
  return tuple(plan)


def torch_spec(small: bool) -> dict[str, tuple]:
  """torch name -> shape of the official RAFT state dict (without `module.`, without
  num_batches_tracked), derived from the Flax model."""
  spec = {}
  for _, name, alias, shape in _plan(small):
    spec[name] = shape
    if alias:
      spec[alias] = shape
  return spec


def is_small_state_dict(sd: Mapping[str, np.ndarray]) -> bool:
  """The small model has a plain ConvGRU (`gru.convz`), the full one a separable GRU (`gru.convz1`)."""
  return any(k.endswith("update_block.gru.convz.weight") for k in sd)


def convert_state_dict(sd: Mapping[str, np.ndarray], small: bool) -> dict:
  """Official RAFT state dict (torch names, numpy arrays) -> Flax pure dict for `raft.RAFT(small)`.

  Raises CheckpointMismatchError naming missing / unexpected keys and shape mismatches.
  """
  sd = strip_prefix(sd, "module.")
  what = f"RAFT ({'small' if small else 'full'}) state dict"
  try:
    check_state_dict(sd, torch_spec(small), what=what)
  except CheckpointMismatchError as e:
    if is_small_state_dict(sd) != small:
      other = "RAFT-small (convert with --small)" if not small else "full RAFT (drop --small)"
      raise CheckpointMismatchError(f"{e}\n  hint: the keys look like {other}") from None
    raise
  flat = {}
  for path, name, _, _ in _plan(small):
    value = np.asarray(sd[name], dtype=np.float32)
    flat[path] = conv_kernel(value) if path[-1] == "kernel" else value.copy()
  return traverse_util.unflatten_dict(flat)


def convert_file(checkpoint: str, out_dir: str, small: bool | None = None) -> str:
  """Reads an official .pth, converts it and saves it with save_pretrained. Returns out_dir."""
  sd = load_torch_file(checkpoint)
  if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  if small is None:
    small = is_small_state_dict(sd)
  params = convert_state_dict(sd, small)
  d = raft.dims(small)
  config = {"small": small, "hidden_dim": d.hidden, "context_dim": d.context,
            "corr_levels": d.levels, "corr_radius": d.radius}
  return save_pretrained(out_dir, params, model=raft.model_name(small), config=config,
                         source=os.path.abspath(checkpoint))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m magplus_jax.ports.raft", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("checkpoint", help="official RAFT .pth (e.g. models/raft-things.pth)")
  parser.add_argument("out_dir", help="output directory (must not exist)")
  size = parser.add_mutually_exclusive_group()
  size.add_argument("--small", dest="small", action="store_true", default=None,
                    help="the file holds RAFT-small (default: detected from the keys)")
  size.add_argument("--full", dest="small", action="store_false", help="the file holds full RAFT")
  args = parser.parse_args(argv)
  out = convert_file(args.checkpoint, args.out_dir, args.small)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  sys.exit(run_cli(main, "magplus_jax.ports.raft"))
