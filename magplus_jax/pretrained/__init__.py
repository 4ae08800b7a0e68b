"""The MagPlus and DeMagPlus weights shipped inside the package, and how the modes find them.

  magplus_jax/pretrained/magplus/   MagPlus   (alpha in [1, 256])
  magplus_jax/pretrained/demag/     DeMagPlus (alpha in [1/256, 1])
each a weights-only training workdir (checkpointing.export_magnifier): checkpoints/<step>/state,
the config.json of the run that made it (configs/pretrained.py) and its calibration.json (the
motion target generate's alpha calibration aims at). README.md here has the command, the log and
the metrics. `generate`, `evaluate`, `protocol` and `magnify` use them whenever no checkpoint is
given; nothing is downloaded.

  magplus_jax/pretrained/fomm_small/  a FOMM backbone trained here (configs/fomm_small.py, 64 px),
in the converted-checkpoint layout (checkpointing.save_pretrained, model "fomm"):
`--config.backbone.name=fomm_small` animates with it.

The network's architecture is read from the shipped config.json, not from the user's config: a
run that changes config.model and gives no checkpoint of its own is told so (`check_model`).
"""
from __future__ import annotations

import json
import os

import ml_collections

DIR = os.path.dirname(os.path.abspath(__file__))
TASKS = ("magplus", "demag")


def path(task: str) -> str:
  if task not in TASKS:
    raise ValueError(f"shipped magnifier {task!r} is unknown; choose one of {TASKS}")
  return os.path.join(DIR, task)


# Backbones trained here and shipped: name -> directory (checkpointing.save_pretrained, model
# "fomm"), used by config.backbone.name=<name> when no checkpoint is given.
BACKBONES = ("fomm_small",)


def backbone_path(name: str) -> str:
  if name not in BACKBONES:
    raise ValueError(f"shipped backbone {name!r} is unknown; choose one of {BACKBONES}")
  p = os.path.join(DIR, name)
  if not os.path.isdir(p):
    raise FileNotFoundError(f"the shipped {name} backbone is missing from {p} (a broken "
                            "install?); give config.backbone.checkpoint, or train one with "
                            f"configs/{name}.py")
  return p


def training_config(task: str) -> dict:
  """The config.json of the run that made the shipped `task` network."""
  p = os.path.join(path(task), "config.json")
  if not os.path.exists(p):
    raise FileNotFoundError(f"the shipped {task} weights are missing from {path(task)} (a broken "
                            "install?); give a checkpoint, or train one with "
                            f"configs/pretrained.py:{task}")
  with open(p) as f:
    return json.load(f)


def model_config(task: str = "magplus") -> dict:
  return training_config(task)["model"]


def alpha_max(task: str = "magplus") -> float:
  return float(training_config(task)["data"]["alpha_max"])


def magnifier_config(task: str, label: str | None = None,
                     max_repeats: int = 1) -> ml_collections.ConfigDict:
  """The `magnifier.build` config of the shipped `task` network."""
  return ml_collections.ConfigDict(dict(
      name="magplus", model=model_config(task), checkpoint=path(task), seed=0,
      label=label or task, alpha_max=alpha_max(task), max_repeats=max_repeats))


def check_model(config_model, task: str = "magplus") -> None:
  """Raises ValueError when config.model is not the shipped network's architecture."""
  shipped = model_config(task)
  given = config_model.to_dict() if hasattr(config_model, "to_dict") else dict(config_model)
  diff = {k: (given.get(k), v) for k, v in shipped.items() if given.get(k) != v}
  if diff:
    pretty = ", ".join(f"model.{k}={a!r} (shipped: {b!r})" for k, (a, b) in sorted(diff.items()))
    raise ValueError(f"no {task} checkpoint given and config.model differs from the shipped "
                     f"network's: {pretty}; give a checkpoint trained with this config.model, or "
                     "drop the overrides to use the shipped weights")


def has_checkpoint(d: str) -> bool:
  ckpts = os.path.join(d, "checkpoints")
  return os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts))


def resolve(task: str, given: str, config, search: tuple[str, ...] = (), label: str | None = None,
            max_repeats: int = 1) -> tuple[ml_collections.ConfigDict, str]:
  """(magnifier.build config, where it came from) for the `task` network of a run.

  In order: the checkpoint the user gave (architecture: config.model, range: config.data), the
  first directory of `search` that holds a training checkpoint (the same), the shipped weights
  (their own architecture and range; config.model must not contradict them)."""
  from magplus_jax.models import magnifier  # pylint: disable=g-import-not-at-top
  own = lambda d: magnifier.config_for(config, d, label or task, max_repeats=max_repeats)
  if given:
    return own(given), f"{task}: checkpoint {given}"
  for d in search:
    if has_checkpoint(d):
      return own(d), f"{task}: the checkpoint in {d}"
  check_model(config.model, task)
  return (magnifier_config(task, label, max_repeats),
          f"{task}: the shipped weights ({path(task)})")
