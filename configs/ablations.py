"""MagPlus ablations: a base config and `sweep(add)`, each `add(...)` one run (big_vision style).

  python launch/sweep.py --config configs/ablations.py --dry-run          # list the runs
  python launch/sweep.py --config configs/ablations.py --workdir-root /tmp/abl
  python launch/sweep.py --config configs/ablations.py --launcher slurm --config.flow.checkpoint=DIR

The base is a mid-size run, large enough that the comparisons mean something and small enough for
one accelerator: a 4-level width-32 U-Net on 128x128 procedural frames (128 px is RAFT's minimum),
20k steps of 32, the weight-free flow in the loss. Every run changes one thing from the base:
  * normalisation: group (base) / batch (FlowMag's) / none;
  * loss weights: the colour term off / 10 (FlowMag's) / 100 (base 1); a supervised pixel term
    added (w_pixel 1, the procedural data knows the exact magnified frame) and the pixel term alone;
  * network output: the base is the Lagrangian form; the Eulerian gate (started at the identity, and
    at linear magnification, gate_init 1), the plain "alpha_residual" form and FlowMag's "sigmoid"
    RGB (models/magnifier.py);
  * alpha range: alpha_max 16 / 32 (base 256, the shipped networks' range);
  * DeMagPlus: separate networks are the base magplus run plus the `task=demag` run; one shared
    network over [1/alpha_max, alpha_max] is the `task=shared` run;
  * flow network in the loss: RAFT (its converted weights at config.flow.checkpoint; pass
    `--config.flow.checkpoint=DIR` to the sweep, see configs/flowmag.py) instead of pyramid_lk.

arg is the task of the base run, as in configs/default.py ("magplus", "demag", "shared").
"""
from magplus_jax import config_lib

# Converted RAFT weights, relative to the working directory; override with --config.flow.checkpoint.
RAFT_CHECKPOINT = "checkpoints/raft-things"


def get_config(arg=None):
  config = config_lib.base_config()
  config.task = arg or "magplus"
  if config.task not in config_lib.TASKS:
    raise ValueError(f"configs/ablations.py:{arg}: choose one of {config_lib.TASKS}")
  config.total_steps = 20_000
  config.batch_size = 32
  config.data.image_size = 128
  config.data.max_motion_px = (0.05, 2.0)
  config.model.levels = 4
  config.model.width = 32
  config.optimizer.warmup_steps = 500
  config.log_every = 50
  config.eval_every = 1_000
  config.checkpoint.every = 1_000
  config.evaluate.batch_size = 32
  return config


def sweep(add):
  """Calls add(**{dotted config key: value}) once per run; add() with nothing is the base run."""
  add()
  for norm in ("batch", "none"):
    add(**{"model.norm": norm})
  for w in (0.0, 10.0, 100.0):
    add(**{"loss.w_color": w})
  add(**{"loss.w_pixel": 1.0})
  add(**{"loss.w_mag": 0.0, "loss.w_color": 0.0, "loss.w_pixel": 1.0})
  add(**{"model.output": "eulerian_gate", "model.gate_init": 1.0})
  for output in ("eulerian_gate", "alpha_residual", "sigmoid"):
    add(**{"model.output": output})
  for a in (16.0, 32.0):
    add(**{"data.alpha_max": a})
  for task in ("demag", "shared"):
    add(task=task)
  add(**{"flow.name": "raft", "flow.checkpoint": RAFT_CHECKPOINT})
