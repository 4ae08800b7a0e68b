"""Magnify the motion of a video: the learned MagPlus (shipped weights) or a classical method.

  python -m magplus_jax.main --config configs/magnify.py --workdir W --config.input=clip.mp4 \
      --config.alpha=10 [--config.magnifier=magplus|eulerian|phase|phase_yiq|identity] \
      [--config.reference=moving] [--config.mask=face_mask.png] [--config.magplus_checkpoint=RUN]

Outputs and options: magplus_jax/magnify.py. With no --config.magplus_checkpoint, MagPlus (alpha >= 1) and
DeMagPlus (alpha < 1) are the weights shipped in magplus_jax/pretrained.
"""
from magplus_jax import config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.mode = "magnify"
  config.input = ""              # video file (mp4/avi/mov/gif) or a folder of frames
  config.alpha = 10.0            # > 0: motion factor (< 1 attenuates); 0: calibrate to motion_target
  config.motion_target = 0.0     # px; 0: the target stored with the MagPlus weights, rescaled
  config.magnifier = "magplus"   # magplus | eulerian | phase | phase_yiq | identity
  config.magplus_checkpoint = ""  # MagPlus training workdir; "": the shipped weights
  config.demag_checkpoint = ""   # DeMagPlus (used for alpha < 1); "": the shipped weights
  config.max_repeats = 1         # > 1: apply a network trained to a smaller alpha_max repeatedly
  config.reference = "first"     # first | moving (mean of +-reference_window // 2 frames)
  config.reference_window = 15
  config.mask = ""               # optional image, white = magnify (per-pixel alpha map)
  config.chunk = 8               # frame pairs per jitted call (bounds memory)
  config.max_frames = 0          # 0: the whole clip
  config.tta_steps = 0           # > 0: test-time adaptation of MagPlus on this clip (FlowMag)
  config.tta_learning_rate = 1e-4
  return config
