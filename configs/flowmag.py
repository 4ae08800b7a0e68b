"""FlowMag-size MagPlus: the network and recipe of FlowMag's `alpha16.color10` run, for pods.

  python -m magplus_jax.main --config configs/flowmag.py --workdir gs://BUCKET/magplus \
      --config.flow.checkpoint=/path/to/raft-things  # made by `python -m magplus_jax.ports.raft`
  python -m magplus_jax.main --config configs/flowmag.py:demag ...
  python launch/aot_check.py --config configs/flowmag.py --topology v5e:4x4   # will it fit?

arg selects the task as in configs/default.py: "magplus" (default, alpha in [1, 16]), "demag"
(alpha in [1/16, 1]) or "shared" (one network over [1/16, 16], an ablation).

What is FlowMag's (dangeng/flowmag configs/alpha16.color10.yaml): a 5-level U-Net of base width 64
with a 32-feature alpha encoding, 512x512 frames, RAFT as the frozen flow network in the loss with 5
refinement iterations, w_mag 1 and w_color 10, alpha in [1, 16], Adam at 3e-4, a global batch of 40
(10 per GPU on 4 GPUs), BatchNorm, sigmoid output.
What is ours: the constant learning rate, the data (the procedural set until a real-video loader
is configured), the step count (FlowMag trained 140 epochs of its own data set; we count steps:
100k steps of 40 = 4M pairs, a choice), gradient clipping at 1 (a safety net FlowMag did not have)
and the checkpoint/eval cadence.
The global batch must be divisible by the number of batch shards (data x fsdp devices): on a
16-chip slice use e.g. `--config.batch_size=48` or 160 (10 per chip, FlowMag's per-GPU batch).

RAFT weights are not downloaded by anything here: `config.flow.checkpoint` must name the directory
written by `python -m magplus_jax.ports.raft models/raft-things.pth OUT_DIR`. It is left empty, so a
run fails early with that instruction; launch/aot_check.py needs no weights (abstract parameters).
"""
from magplus_jax import config_lib

# Where a user typically puts the converted RAFT weights; not set by default (see module doc).
RAFT_CHECKPOINT_HINT = "checkpoints/raft-things"


def get_config(arg=None):
  config = config_lib.base_config()
  config.task = arg or "magplus"
  if config.task not in config_lib.TASKS:
    raise ValueError(f"configs/flowmag.py:{arg}: choose one of {config_lib.TASKS}")

  config.total_steps = 100_000
  config.batch_size = 40

  config.data.image_size = 512
  config.data.supersample = 2  # rendering 2048x2048 per frame (4x) would starve the accelerators
  config.data.alpha_max = 16.0
  config.data.max_motion_px = (0.05, 2.0)
  config.data.num_workers = 16
  config.data.num_eval_examples = 256

  config.model.levels = 5
  config.model.width = 64
  config.model.max_width = 512
  config.model.alpha_features = 32
  config.model.norm = "batch"
  config.model.output = "sigmoid"

  config.flow.name = "raft"
  config.flow.checkpoint = ""  # set to the converted raft-things directory (RAFT_CHECKPOINT_HINT)
  config.flow.iters = 5

  config.loss.w_mag = 1.0
  config.loss.w_color = 10.0
  config.loss.w_pixel = 0.0

  config.optimizer.learning_rate = 3e-4
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0

  config.log_every = 50
  config.eval_every = 2_000
  config.checkpoint.every = 2_000
  config.checkpoint.keep_every = 20_000
  config.evaluate.batch_size = 8
  return config
