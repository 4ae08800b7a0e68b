"""`protocol`: the synthetic magnification protocol (synthetic_protocol.py) as one command.

  python -m magplus_jax.main --config configs/protocol.py --workdir W \
      [--config.protocol.checkpoint=runs/magplus]

Builds the magnifiers named in config.protocol.magnifiers and runs `synthetic_protocol.run_protocol`
and `write_report` into the workdir (synthetic_protocol.md / .json, one PNG per sweep):
  * "identity", "eulerian", "phase": magnifiers.get_magnifier defaults;
  * "phase_yiq": phase-based with color_mode="yiq" (all three channels magnified);
  * "magplus": the trained network. Its checkpoint is config.protocol.checkpoint, else the first of
    <workdir>/magplus and <workdir> that holds a training checkpoint (so the command can run in the
    workdir `generate` or `train` wrote), else the weights shipped in magplus_jax/pretrained (when
    config.model is another architecture and nothing is given, it is skipped and listed in the
    JSON's "skipped");
  * "untrained": the same network (config.model) freshly initialised: what training must beat.
The protocol's alphas (10 to 250) lie inside the shipped network's training range [1, 256]: one
application. A network trained to a smaller alpha_max is applied k = ceil(log alpha / log
alpha_max) times with alpha**(1/k) each, k capped at config.protocol.max_repeats (default 1 = a
single application at the full alpha), chosen inside the jitted function from the batch's alpha.
"""
from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from magplus_jax import config_lib, pretrained
from magplus_jax.evaluation import synthetic_protocol
from magplus_jax.models import magnifier as magnifier_lib
from magplus_jax.models import magnifiers as magnifiers_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAGNIFIERS = ("identity", "eulerian", "phase", "phase_yiq", "magplus", "untrained")


def find_checkpoint(config, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
  """(the MagPlus network's build config, where it came from): config.protocol.checkpoint, else
  <workdir>/magplus or <workdir> when they hold a training checkpoint, else the shipped weights."""
  return pretrained.resolve("magplus", config.protocol.checkpoint, config,
                            search=(os.path.join(workdir, "magplus"), workdir) if workdir else (),
                            max_repeats=int(config.protocol.max_repeats))


def _network(config, checkpoint: str, label: str) -> magnifiers_lib.Magnifier:
  """config.model's network (untrained when checkpoint is ""), its applications per frame
  following alpha up to config.protocol.max_repeats (magnifier.magnify_clip_fn)."""
  return magnifier_lib.build(magnifier_lib.config_for(
      config, checkpoint, label, max_repeats=int(config.protocol.max_repeats)))


def build_magnifiers(config, workdir: str = "") -> tuple[dict, list[str], str]:
  """({label: Magnifier}, [skipped labels with the reason], trained checkpoint dir or "")."""
  pc = config.protocol
  bad = [m for m in pc.magnifiers if m not in MAGNIFIERS]
  if bad or not pc.magnifiers:
    raise ValueError(f"config.protocol.magnifiers={tuple(pc.magnifiers)}: choose from {MAGNIFIERS}")
  if int(pc.max_repeats) < 1:
    raise ValueError(f"config.protocol.max_repeats={pc.max_repeats}: must be >= 1")
  mags, skipped, ckpt = {}, [], ""
  for name in pc.magnifiers:
    if name == "phase_yiq":
      mags[name] = magnifiers_lib.get_magnifier(
          ml_collections.ConfigDict(dict(name="phase", color_mode="yiq")))
    elif name == "magplus":
      try:
        mag_cfg, where = find_checkpoint(config, workdir)
      except ValueError as e:  # config.model is not the shipped network and nothing was given
        skipped.append(f"magplus: {e}")
        logging.warning("the trained MagPlus is not scored: %s", e)
        continue
      ckpt = mag_cfg.checkpoint
      logging.info("trained MagPlus: %s", where)
      mags[name] = magnifier_lib.build(mag_cfg)
    elif name == "untrained":
      mags[name] = _network(config, "", "untrained")
    else:
      mags[name] = magnifiers_lib.get_magnifier(ml_collections.ConfigDict(dict(name=name)))
  return mags, skipped, ckpt


def spec_from_config(config) -> synthetic_protocol.ProtocolSpec:
  skip = ("checkpoint", "magnifiers", "tests", "max_repeats")
  return synthetic_protocol.ProtocolSpec.from_config(
      {k: v for k, v in config.protocol.items() if k not in skip})


def _header(results: dict) -> str:
  lines = ["## Synthetic magnification protocol (Oh et al. 2018)", "",
           "`python -m magplus_jax.main --config configs/protocol.py --workdir W`; "
           "magnifiers: " + ", ".join(results["magnifiers"]) + "."]
  if results["checkpoint"]:
    lines.append(f"Trained MagPlus: `{os.path.relpath(results['checkpoint'], _ROOT)}`, applied up to "
                 f"{results['max_repeats']} time(s) per frame (alpha**(1/k) each).")
  lines += [f"Not scored: {s}." for s in results["skipped"]]
  return "\n".join(lines) + "\n\n"


def protocol(config, workdir: str) -> dict:
  """Runs the protocol, writes the report into workdir; returns the results (with "skipped")."""
  config_lib.validate(config)
  bad = [t for t in config.protocol.tests if t not in ("subpixel", "noise")]
  if bad or not config.protocol.tests:
    raise ValueError(f"config.protocol.tests={tuple(config.protocol.tests)}: choose from "
                     "('subpixel', 'noise')")
  try:
    spec = spec_from_config(config)
  except ValueError as e:
    raise ValueError(f"config.protocol: {e}") from e
  mags, skipped, ckpt = build_magnifiers(config, workdir)
  logging.info("synthetic protocol: %s on %s", list(mags), spec)
  results = synthetic_protocol.run_protocol(mags, spec, tests=tuple(config.protocol.tests))
  results["skipped"] = skipped
  results["checkpoint"] = ckpt
  results["max_repeats"] = int(config.protocol.max_repeats)
  paths = synthetic_protocol.write_report(results, workdir)
  with open(paths["markdown"]) as f:
    table = f.read()
  with open(paths["markdown"], "w") as f:
    f.write(_header(results) + table)
  logging.info("wrote %s", ", ".join(paths.values()))
  print(table)
  with open(paths["json"]) as f:  # what was written, so callers and the file agree
    return json.load(f)


if __name__ == "__main__":
  from magplus_jax.evaluation.generation import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(protocol)
