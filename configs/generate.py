"""Generation: photo + micro-expression clip -> micro-expression video of that face.

  python -m magplus_jax.main --config configs/generate.py --workdir runs/gen \
      [--config.source=face.png --config.driving=clip.mp4] [--config.generate.alpha=8]
      [--config.backbone.name=fomm --config.backbone.checkpoint=converted/fomm]

Without source/driving: the embedded default (grace_hopper.jpg from matplotlib, animated by a
procedural micro-expression clip on scikit-image's astronaut). Without magnifier checkpoints:
<workdir>/magplus and <workdir>/demag if they hold one, else the weights shipped in
magplus_jax/pretrained. arg = backbone name; "fomm_small" is the FOMM trained here and shipped
(configs/fomm_small.py), at the 64 px it was trained at.
"""
import ml_collections

from magplus_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.mode = "generate"
  config.source = ""    # face photo (png/jpg/...)
  config.driving = ""   # micro-expression clip (mp4/avi/mov or a frame folder)
  config.backbone = ml_collections.ConfigDict(dict(
      name=arg or "warp", image_size=128, checkpoint="", align_corners=False,
      adapt_movement_scale=True, relative=True))
  if config.backbone.name == "fomm_small":  # 0: the size its checkpoint was trained at (64)
    config.backbone.image_size = 0
  if config.backbone.name == "emoportraits":  # fields of models/backbones/emoportraits.py
    config.backbone.update(dict(
        image_size=512, headpose_checkpoint="", mask="bisenet", bisenet_checkpoint="",
        pose_mode="relative", expression_mode="absolute", chunk_size=1, dtype="float32"))
  config.generate = ml_collections.ConfigDict(dict(
      alpha=0.0,              # > 0: fixed alpha; 0: calibrated per clip
      motion_target=0.0,      # > 0: overrides the target stored with the MagPlus checkpoint
      max_repeats=1,          # >1: alpha up to alpha_max ** max_repeats by repeated application
      # >= 1: the output moves 1/attenuate of the driver (DeMagPlus at 1/(alpha*attenuate)): the
      # macro -> micro direction, e.g. a regular-expression clip with alpha=1, attenuate=8
      attenuate=1.0,
      chunk=8,                # frames per jitted pipeline call
      crop=True,              # face crop (one box per clip) before resizing
      max_frames=300,
      default_num_frames=24,  # length of the embedded procedural clip
      magplus_checkpoint="", demag_checkpoint="",
      tta_steps=0,            # > 0: test-time adaptation of MagPlus on the driving clip (FlowMag)
      tta_learning_rate=1e-4))
  return config
