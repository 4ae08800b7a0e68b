"""The embedded default: MagPlus on the procedural data set, small enough for 2 CPU cores.

  python -m magplus_jax.main --config configs/default.py --workdir /tmp/magplus
  python -m magplus_jax.main --config configs/default.py:demag --workdir /tmp/demag

arg selects the task: "magplus" (default; alpha in [1, alpha_max]), "demag" (alpha in
[1/alpha_max, 1]) or "shared" (one network over [1/alpha_max, alpha_max], an ablation).
Trains a 3-level, width-16 U-Net at 64x64 through the weight-free flow estimator: nothing to download.
"""
from magplus_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.task = arg or "magplus"
  if config.task not in config_lib.TASKS:
    raise ValueError(f"configs/default.py:{arg}: choose one of {config_lib.TASKS}")
  return config
