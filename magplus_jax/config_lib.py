"""The base config every configs/*.py starts from, and the checks run before any work.

Configs are ml_collections ConfigDicts, locked: `--config.no_such_key=1` is refused with the nearest
valid names (ml_collections' suggestion), and `main` turns that into one line and exit status 2.
Fields are grouped: data, model (the magnifier network), flow (F), loss, optimizer, mesh /
sharding_rules, checkpoint, evaluate, generate. Every number that changes results is here,
including the seed; nothing is read from the environment.
"""
from __future__ import annotations

import math

import ml_collections

ConfigDict = ml_collections.ConfigDict

# alpha ranges of the three training tasks (DESIGN.md); alpha_max is config.data.alpha_max.
TASKS = ("magplus", "demag", "shared")
# config.mode -> (module of magplus_jax, its job function(config, workdir)); main.py dispatches on it.
MODES = {"train": ("train", "train_and_evaluate"), "generate": ("generate", "generate"),
         "magnify": ("magnify", "magnify"),
         # the ways of scoring, all in magplus_jax/evaluation/
         "evaluate": ("evaluation.heldout", "evaluate"),
         "protocol": ("evaluation.protocol_mode", "protocol"),
         "evaluate_generation": ("evaluation.generation", "evaluate_generation")}


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.mode = "train"  # one of MODES
  c.task = "magplus"  # magplus: alpha in [1, a_max]; demag: [1/a_max, 1]; shared: [1/a_max, a_max]
  c.seed = 0
  c.total_steps = 300
  c.batch_size = 8  # global batch, split over processes and the mesh's batch axes

  c.data = ConfigDict(dict(
      name="procedural", image_size=64, supersample=4, alpha_max=256.0,
      max_motion_px=(0.05, 1.0), noise_std=0.003, sources="all",
      num_workers=0, num_eval_examples=32))

  # The shipped network's architecture (magplus_jax/pretrained, configs/pretrained.py), so that every
  # mode uses the shipped weights when no checkpoint is given. output / gate_init: see
  # models/magnifier.py (gate_init only matters for output="eulerian_gate").
  c.model = ConfigDict(dict(levels=4, width=16, max_width=512, norm="group", alpha_features=32,
                            output="lagrangian", gate_init=0.0))
  # iters: RAFT's GRU refinements, or pyramid_lk's Gauss-Newton steps per coarse level (it does
  # iters_finest at full resolution); levels: pyramid_lk's pyramid depth. checkpoint: RAFT weights.
  c.flow = ConfigDict(dict(name="pyramid_lk", checkpoint="", iters=3, iters_finest=5, levels=4))
  # FlowMag used w_color 10 (with RAFT); with pyramid_lk, 10 trades measured motion for appearance
  # (session-2 runs: ratio 1.74 instead of 2 at alpha 2); 1 keeps the motion.
  c.loss = ConfigDict(dict(w_mag=1.0, w_color=1.0, w_pixel=0.0))
  # FlowMag used 3e-4 for long runs; the 300-step CPU default learns faster at 1e-3.
  c.optimizer = ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="cosine",
                                warmup_steps=20, end_lr_fraction=0.1, b1=0.9, b2=0.999,
                                weight_decay=0.0, grad_clip_norm=1.0))
  c.augment = ConfigDict(dict(flip=True))
  c.nan_policy = "stop"  # stop | skip: what a non-finite loss or gradient does

  c.mesh = (("data", -1), ("fsdp", 1), ("model", 1))
  c.sharding_rules = ((".*", "replicate"),)

  c.log_every = 10
  c.eval_every = 100
  c.checkpoint = ConfigDict(dict(every=100, keep=3, keep_every=0, async_save=True))
  c.profile = False
  c.stop_after_steps = 0  # >0: leave the loop early (used to test resume; the schedule keeps total_steps)

  # evaluate mode (magplus_jax/evaluation/heldout.py)
  c.evaluate = ConfigDict(dict(alphas=(4.0, 8.0, 16.0, 32.0), num_clips=32, checkpoint="",
                               demag_checkpoint="", baselines=("identity", "untrained"),
                               batch_size=16, out="metrics.json"))
  return c


def alpha_range(config) -> tuple[float, float]:
  a = float(config.data.alpha_max)
  return {"magplus": (1.0, a), "demag": (1.0 / a, 1.0), "shared": (1.0 / a, a)}[config.task]


def validate(config) -> None:
  """Raises ValueError naming the field for values that would otherwise fail deep inside a run."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}: choose one of {sorted(MODES)}")
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r}: choose one of {TASKS}")
  a = config.data.alpha_max
  if not (isinstance(a, (int, float)) and math.isfinite(a) and a > 1):
    raise ValueError(f"config.data.alpha_max={a!r}: must be a finite number > 1")
  for name in ("total_steps", "batch_size"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name}={config[name]!r}: must be > 0")
  if config.nan_policy not in ("stop", "skip"):
    raise ValueError(f"config.nan_policy={config.nan_policy!r}: choose stop or skip")
  div = 2 ** (config.model.levels - 1)
  if config.data.image_size % div:
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by "
                     f"{div} for config.model.levels={config.model.levels}")
  from magplus_jax.models import backbones, flow, magnifier  # pylint: disable=g-import-not-at-top
  choices = {"config.model.norm": (config.model.norm, ("group", "batch", "none")),
             "config.model.output": (config.model.get("output", magnifier.OUTPUTS[0]),
                                     magnifier.OUTPUTS),
             "config.optimizer.name": (config.optimizer.name, ("adam", "sgd")),
             "config.optimizer.schedule": (config.optimizer.schedule, ("constant", "cosine")),
             "config.flow.name": (config.flow.name, tuple(flow.names()))}
  if "backbone" in config:
    choices["config.backbone.name"] = (config.backbone.name, tuple(backbones.names()))
  for field, (value, allowed) in choices.items():
    if value not in allowed:
      raise ValueError(f"{field}={value!r}: choose one of {allowed}")
  if "evaluate" in config:
    for alpha in config.evaluate.alphas:
      if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"config.evaluate.alphas contains {alpha}: alpha must be finite and > 0")
