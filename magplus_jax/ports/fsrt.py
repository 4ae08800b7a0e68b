"""Converts the official FSRT checkpoints (andrerochow/fsrt) to Flax.

    python -m magplus_jax.ports.fsrt vox256.pt kp_detector.pt OUT_DIR [--config vox256.yaml]

`vox256.pt` is what FSRT's `Checkpoint.save` writes: a dict with the `encoder`, `decoder` and
`expression_encoder` state dicts (training files also hold optimizer / discriminator states and
counters, which are ignored). `kp_detector.pt` is the keypoint detector's bare state dict (the
same file for every released FSRT model). `--config` takes the official run yaml (its `model`
section; default runs/vox256/vox256.yaml). The output is the whole model state as one pure dict
{"kp_detector", "expression_encoder", "encoder", "decoder"}, saved with
`save_pretrained(model="fsrt")`.
"""
from __future__ import annotations

import argparse
import re
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from magplus_jax.checkpointing import save_pretrained
from magplus_jax.models.backbones.fsrt import VOX256_CONFIG, abstract_model
from magplus_jax.ports.common import CheckpointMismatchError, load_torch_file, strip_prefix
from magplus_jax.ports.fomm import convert_with_map, torch_layout_map

PARTS = ("encoder", "decoder", "expression_encoder")

# Flax module path -> torch module path (the torch tree uses nn.Sequential indices and
# PreNorm(fn=...) wrappers; ReLU/GELU/Dropout take the odd Sequential slots).
_RENAMES = [
    (r"^conv_blocks\.(\d+)\.conv1", r"conv_blocks.\1.layers.0"),
    (r"^conv_blocks\.(\d+)\.conv2", r"conv_blocks.\1.layers.2"),
    (r"transformer\.layers\.(\d+)\.attn_norm$", r"transformer.layers.\1.0.norm"),
    (r"transformer\.layers\.(\d+)\.attn\.to_out$", r"transformer.layers.\1.0.fn.to_out.0"),
    (r"transformer\.layers\.(\d+)\.attn\.", r"transformer.layers.\1.0.fn."),
    (r"transformer\.layers\.(\d+)\.ff_norm$", r"transformer.layers.\1.1.norm"),
    (r"transformer\.layers\.(\d+)\.ff\.fc1$", r"transformer.layers.\1.1.fn.net.0"),
    (r"transformer\.layers\.(\d+)\.ff\.fc2$", r"transformer.layers.\1.1.fn.net.3"),
]
_SEQUENTIAL = re.compile(r"^(expression_mlp|input_mlp|render_mlp)\.(\d+)$")


def _rename(part: str):
  def rename(module: str) -> str:
    m = _SEQUENTIAL.match(module)
    if m:  # Linear layers sit at even indices of the torch nn.Sequential
      module = f"{m.group(1)}.{2 * int(m.group(2))}"
    for pattern, repl in _RENAMES:
      module = re.sub(pattern, repl, module)
    if part == "decoder" and not module.startswith("render_mlp"):
      module = "allocation_transformer." + module
    return module
  return rename


def template(config: dict) -> dict:
  return nnx.to_pure_dict(nnx.state(abstract_model(config)))


def convert_state_dict(sd_fsrt: Mapping[str, Mapping[str, np.ndarray]],
                       sd_kp: Mapping[str, np.ndarray], config: dict | None = None) -> dict:
  """sd_fsrt: {'encoder': sd, 'decoder': sd, 'expression_encoder': sd}; sd_kp: the kp detector's
  state dict -> Flax pure dict. Raises CheckpointMismatchError naming missing / unexpected keys
  and shape mismatches."""
  config = config or VOX256_CONFIG
  tmpl = template(config)
  out = {"kp_detector": convert_with_map(strip_prefix(dict(sd_kp), "module."),
                                         torch_layout_map(tmpl["kp_detector"]),
                                         what="FSRT kp_detector")}
  for part in PARTS:
    out[part] = convert_with_map(strip_prefix(dict(sd_fsrt[part]), "module."),
                                 torch_layout_map(tmpl[part], _rename(part)), what=f"FSRT {part}")
  return out


def convert(ckpt: Mapping, kp_ckpt: Mapping, config: dict | None = None) -> dict:
  """The official FSRT checkpoint dict and kp_detector.pt state dict -> Flax pure dict."""
  if not isinstance(ckpt, Mapping) or not set(PARTS) <= set(ckpt):
    keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise CheckpointMismatchError(
        f"FSRT checkpoint: expected a dict with {', '.join(PARTS)} state dicts (as written by "
        f"FSRT's Checkpoint.save); found {keys}")
  if not isinstance(kp_ckpt, Mapping) or any(isinstance(v, Mapping) for v in kp_ckpt.values()):
    raise CheckpointMismatchError(
        "FSRT kp_detector: expected kp_detector.pt's bare state dict (name -> tensor); found a "
        f"nested dict with keys {sorted(map(str, kp_ckpt))[:8]}")
  return convert_state_dict(ckpt, kp_ckpt, config)


def read_config(config_path: str | None) -> dict:
  """The model config of an official FSRT run yaml (None: vox256), plus the KPDetector defaults."""
  if not config_path:
    return VOX256_CONFIG
  import yaml  # pylint: disable=g-import-not-at-top
  with open(config_path) as f:
    cfg = yaml.safe_load(f)
  if "model" not in cfg or "encoder_kwargs" not in cfg["model"]:
    raise ValueError(f"{config_path!r} has no model.encoder_kwargs: not an FSRT run config")
  out = {k: cfg["model"][k] for k in ("encoder_kwargs", "decoder_kwargs", "expression_size")}
  out["small_decoder"] = bool(cfg["model"].get("small_decoder", False))
  out["kp_detector_params"] = cfg.get("kp_detector_params", VOX256_CONFIG["kp_detector_params"])
  return out


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkpoint", help="official FSRT checkpoint (fsrt_checkpoints/vox256.pt)")
  parser.add_argument("kp_checkpoint", help="fsrt_checkpoints/kp_detector.pt")
  parser.add_argument("out_dir", help="output directory (must not exist)")
  parser.add_argument("--config", default=None, help="official run yaml (default: vox256)")
  parser.add_argument("--image_size", type=int, default=256)
  args = parser.parse_args(argv)
  config = read_config(args.config)
  params = convert(load_torch_file(args.checkpoint), load_torch_file(args.kp_checkpoint), config)
  return save_pretrained(args.out_dir, jax.tree.map(np.asarray, params), model="fsrt",
                         config=dict(config, image_size=args.image_size),
                         source=f"{args.checkpoint} + {args.kp_checkpoint}")


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  print(run_cli(main, "magplus_jax.ports.fsrt"))
