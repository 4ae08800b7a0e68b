"""Converts the official First Order Motion Model checkpoint (e.g. `vox-cpk.pth.tar`) to Flax.

    python -m magplus_jax.ports.fomm vox-cpk.pth.tar OUT_DIR [--config config/vox-256.yaml]

The official file is a dict holding (among optimizer states and the discriminator, which are
ignored) the `generator` and `kp_detector` state dicts; `--config` takes the official yaml whose
`model_params` built the network (default: vox-256). The Flax modules mirror the torch module tree,
so names map mechanically (`torch_layout_map`); the output is the whole model state (parameters,
BatchNorm running statistics, the anti-aliasing Gaussian buffers) as one pure dict
{"kp_detector": ..., "generator": ...}, saved with `save_pretrained(model="fomm")`.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from magplus_jax.checkpointing import save_pretrained
from magplus_jax.models.backbones.fomm import VOX256_MODEL_PARAMS, abstract_model
from magplus_jax.ports.common import (CheckpointMismatchError, check_state_dict, conv_kernel,
                                      linear_kernel, load_torch_file, strip_prefix)

# Flax leaf name -> torch leaf name (Conv/Linear kernel, BatchNorm/LayerNorm scale and stats,
# and buffers kept under their torch name).
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var", "weight": "weight"}


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _to_torch_shape(leaf: str, shape: tuple) -> tuple:
  if leaf in ("kernel", "weight") and len(shape) >= 3:  # conv [*k, I, O] -> [O, I, *k]
    return (shape[-1], shape[-2]) + tuple(shape[:-2])
  if leaf == "kernel" and len(shape) == 2:  # linear [I, O] -> [O, I]
    return (shape[1], shape[0])
  return tuple(shape)


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value)
  if leaf in ("kernel", "weight") and value.ndim >= 3:
    return conv_kernel(value)
  if leaf == "kernel" and value.ndim == 2:
    return linear_kernel(value)
  return value


def torch_layout_map(template: Mapping, rename: Callable[[str], str] = lambda s: s
                     ) -> dict[str, tuple[tuple, str, tuple]]:
  """torch name -> (Flax path, Flax leaf, torch shape), from a Flax state template.

  template: the model's `nnx.to_pure_dict(nnx.state(model))` (arrays or ShapeDtypeStructs).
  rename: maps the dotted Flax module path to the torch one where the trees differ.
  """
  out = {}
  for path, value in _flatten(template).items():
    leaf = str(path[-1])
    module = rename(".".join(str(p) for p in path[:-1]))
    name = f"{module}.{_LEAF[leaf]}" if module else _LEAF[leaf]
    out[name] = (path, leaf, _to_torch_shape(leaf, tuple(value.shape)))
  return out


def convert_with_map(sd: Mapping[str, np.ndarray], layout: dict, what: str) -> dict:
  """Checks `sd` against `layout` (see torch_layout_map) and returns the nested Flax pure dict."""
  check_state_dict(sd, {k: v[2] for k, v in layout.items()}, what)
  out: dict = {}
  for name, (path, leaf, _) in layout.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = _to_flax(leaf, sd[name]).astype(np.float32)
  return out


def _fomm_rename(module: str) -> str:
  # The generator's bottleneck is an nn.Sequential with children named r0, r1, ...
  return re.sub(r"(^|\.)bottleneck\.(\d+)", r"\1bottleneck.r\2", module)


def template(model_params: dict) -> dict:
  return nnx.to_pure_dict(nnx.state(abstract_model(model_params)))


def convert_state_dict(sd_generator: Mapping[str, np.ndarray], sd_kp: Mapping[str, np.ndarray],
                       model_params: dict | None = None) -> dict:
  """The official generator and kp_detector state dicts -> {"kp_detector": ..., "generator": ...}.

  Raises CheckpointMismatchError naming missing / unexpected keys and shape mismatches.
  """
  model_params = model_params or VOX256_MODEL_PARAMS
  tmpl = template(model_params)
  sds = {"generator": strip_prefix(dict(sd_generator), "module."),
         "kp_detector": strip_prefix(dict(sd_kp), "module.")}
  return {part: convert_with_map(sds[part], torch_layout_map(tmpl[part], _fomm_rename),
                                 what=f"FOMM {part}")
          for part in ("kp_detector", "generator")}


def convert(ckpt: Mapping, model_params: dict | None = None) -> dict:
  """An official checkpoint dict (with 'generator' and 'kp_detector') -> Flax pure dict."""
  if not isinstance(ckpt, Mapping) or not {"generator", "kp_detector"} <= set(ckpt):
    keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise CheckpointMismatchError(
        "FOMM checkpoint: expected a dict with 'generator' and 'kp_detector' state dicts "
        f"(as in vox-cpk.pth.tar); found {keys}")
  return convert_state_dict(ckpt["generator"], ckpt["kp_detector"], model_params)


def read_model_params(config_path: str | None) -> dict:
  """`model_params` of an official FOMM yaml (None: vox-256)."""
  if not config_path:
    return VOX256_MODEL_PARAMS
  try:
    import yaml  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover
    raise ImportError("reading an official FOMM yaml needs pyyaml") from e
  with open(config_path) as f:
    cfg = yaml.safe_load(f)
  if "model_params" not in cfg:
    raise ValueError(f"{config_path!r} has no model_params: not a FOMM config")
  mp = cfg["model_params"]
  return {k: mp[k] for k in ("common_params", "kp_detector_params", "generator_params")}


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="official FOMM checkpoint, e.g. vox-cpk.pth.tar")
  parser.add_argument("out_dir", help="output directory (must not exist)")
  parser.add_argument("--config", default=None,
                      help="official yaml with the model_params (default: config/vox-256.yaml)")
  parser.add_argument("--image_size", type=int, default=256)
  args = parser.parse_args(argv)
  model_params = read_model_params(args.config)
  params = convert(load_torch_file(args.checkpoint), model_params)
  config = dict(model_params, image_size=args.image_size)
  return save_pretrained(args.out_dir, jax.tree.map(np.asarray, params), model="fomm",
                         config=config, source=args.checkpoint)


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  print(run_cli(main, "magplus_jax.ports.fomm"))
