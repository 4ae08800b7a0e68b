"""`protocol`: the synthetic magnification protocol (synthetic_protocol.py) as one command.

  python -m magplus_jax.protocol_main --config configs/protocol.py --workdir W \
      [--config.protocol.checkpoint=runs/magplus]

Builds the magnifiers named in config.protocol.magnifiers and runs `synthetic_protocol.run_protocol`
and `write_report` into the workdir (synthetic_protocol.md / .json, one PNG per sweep):
  * "identity", "eulerian", "phase": magnifiers.get_magnifier defaults;
  * "phase_yiq": phase-based with color_mode="yiq" (all three channels magnified);
  * "magplus": the trained network from config.protocol.checkpoint; skipped with a warning when no
    checkpoint is given (listed in the JSON's "skipped");
  * "untrained": the same network (config.model) freshly initialised: what training must beat.
MagPlus is applied once per alpha (repeats=1); the protocol's alphas (10 to 250) are far beyond the
network's training range [1, config.data.alpha_max], which is part of what the protocol measures
(FlowMag reports the same protocol for its network).
"""
from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from magplus_jax import config_lib, synthetic_protocol
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models import magnifiers as magnifiers_lib

MAGNIFIERS = ("identity", "eulerian", "phase", "phase_yiq", "magplus", "untrained")


def _network(config, checkpoint: str, label: str) -> magnifiers_lib.Magnifier:
  return magnifier_lib.build(ml_collections.ConfigDict(dict(
      name="magplus", model=config.model.to_dict(), checkpoint=checkpoint, seed=config.seed,
      label=label, repeats=1)))


def build_magnifiers(config) -> tuple[dict, list[str]]:
  """({label: Magnifier}, [skipped labels with the reason])."""
  pc = config.protocol
  bad = [m for m in pc.magnifiers if m not in MAGNIFIERS]
  if bad or not pc.magnifiers:
    raise ValueError(f"config.protocol.magnifiers={tuple(pc.magnifiers)}: choose from {MAGNIFIERS}")
  mags, skipped = {}, []
  for name in pc.magnifiers:
    if name == "phase_yiq":
      mags[name] = magnifiers_lib.get_magnifier(
          ml_collections.ConfigDict(dict(name="phase", color_mode="yiq")))
    elif name == "magplus":
      if not pc.checkpoint:
        skipped.append("magplus: no config.protocol.checkpoint")
        logging.warning("no config.protocol.checkpoint: the trained MagPlus is not scored")
        continue
      mags[name] = _network(config, pc.checkpoint, "magplus")
    elif name == "untrained":
      mags[name] = _network(config, "", "untrained")
    else:
      mags[name] = magnifiers_lib.get_magnifier(ml_collections.ConfigDict(dict(name=name)))
  return mags, skipped


def spec_from_config(config) -> synthetic_protocol.ProtocolSpec:
  return synthetic_protocol.ProtocolSpec.from_config(
      {k: v for k, v in config.protocol.items() if k not in ("checkpoint", "magnifiers", "tests")})


def protocol(config, workdir: str) -> dict:
  """Runs the protocol, writes the report into workdir; returns the results (with "skipped")."""
  base = ml_collections.ConfigDict(config.to_dict())
  base.mode = "evaluate"  # config_lib.validate knows the modes main.py dispatches
  config_lib.validate(base)
  spec = spec_from_config(config)
  mags, skipped = build_magnifiers(config)
  logging.info("synthetic protocol: %s on %s", list(mags), spec)
  results = synthetic_protocol.run_protocol(mags, spec, tests=tuple(config.protocol.tests))
  results["skipped"] = skipped
  results["checkpoint"] = config.protocol.checkpoint
  paths = synthetic_protocol.write_report(results, workdir)
  logging.info("wrote %s", ", ".join(paths.values()))
  print(synthetic_protocol.format_table(results))
  with open(paths["json"]) as f:  # what was written, so callers and the file agree
    return json.load(f)


if __name__ == "__main__":
  from magplus_jax.evaluate_generation import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(protocol)
