"""The synthetic magnification protocol (Oh et al. 2018, as reused by FlowMag) as one command.

  python -m magplus_jax.main --config configs/protocol.py --workdir W \
      [--config.protocol.checkpoint=runs/magplus] [--config.protocol.image_size=128 \
       --config.protocol.num_pairs=16]

Scores identity, Eulerian, phase-based (luma and YIQ) and the MagPlus network (trained: from
config.protocol.checkpoint, else <workdir>/magplus or <workdir> when they hold a checkpoint;
untrained: the same architecture freshly initialised) by SSIM against the exactly magnified frame on a sub-pixel sweep and a noise sweep. Writes
W/synthetic_protocol.{md,json} and W/synthetic_protocol_{subpixel,noise}.png.

Defaults run in a few minutes on 2 CPU cores (64 px, 8 pairs per point); the published protocol
uses larger frames and more pairs (e.g. image_size=384, num_pairs=100 — hours on CPU). The MagPlus
network's architecture is config.model (configs/default.py's); a checkpoint of another size fails
with a message naming it. arg: "full" = the ProtocolSpec defaults (128 px, 16 pairs).
"""
import ml_collections
import numpy as np

from magplus_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.mode = "protocol"
  full = arg == "full"
  if arg not in (None, "", "full"):
    raise ValueError(f"configs/protocol.py:{arg}: the only argument is 'full'")
  config.protocol = ml_collections.ConfigDict(dict(
      checkpoint="",                  # trained MagPlus (a training workdir); "" = <workdir>/magplus
                                      # or <workdir> if they hold one, else not scored
      max_repeats=1,                  # MagPlus applications per frame (>1: alpha > alpha_max)
      magnifiers=("identity", "eulerian", "phase", "phase_yiq", "magplus", "untrained"),
      tests=("subpixel", "noise"),
      # ProtocolSpec fields (magplus_jax/evaluation/synthetic_protocol.py)
      image_size=128 if full else 64,
      num_pairs=16 if full else 8,
      batch_size=8,
      border=8,
      magnified_px=10.0,
      motions=tuple(float(v) for v in np.geomspace(0.04, 1.0, 8 if full else 6).round(4)),
      subpixel_noise=0.0,
      noise_stds=(0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0) if full else (0.01, 1.0, 10.0, 100.0),
      noise_motion=0.05,
      noise_alpha=200.0,
      supersample=4,
      sources="all"))
  return config
