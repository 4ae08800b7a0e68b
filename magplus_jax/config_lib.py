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

# What config.task trains: the three magnifier tasks (their alpha ranges: alpha_range, DESIGN.md;
# alpha_max is config.data.alpha_max) and "fomm", the First Order Motion Model backbone itself
# (magplus_jax/fomm_training.py; its fields are config.fomm, see fomm_config).
MAGNIFIER_TASKS = ("magplus", "demag", "shared")
TASKS = MAGNIFIER_TASKS + ("fomm",)
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
  c.loss = ConfigDict(dict(w_mag=1.0, w_color=1.0, w_pixel=0.0, w_parts=0.0))
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


def fomm_config() -> ConfigDict:
  """config.fomm for config.task="fomm" (configs/fomm_small.py): a reduced 64 px FOMM.

  model_params has the layout of the official config/vox-256.yaml model_params
  (models/backbones/fomm.VOX256_MODEL_PARAMS) so that the trained weights load through the FOMM
  backbone; the widths here are cut for a 2-core CPU (vox-256: kp 32/1024/5 blocks at 1/4 scale,
  generator 64/512 with 6 bottleneck blocks, dense motion 64/1024/5 blocks at 1/4 scale). At 64 px
  a 1/2 input scale with 4 blocks ends the hourglasses at 2x2 px, as vox-256's 1/4 and 5 do at 256.
  transform / loss: the official train_params (transform_params, loss_weights, scales), with an
  L1 image pyramid in place of VGG-19 perceptual features unless loss.reconstruction="vgg19" (then
  loss.vgg_checkpoint: a directory written by `python -m magplus_jax.ports.vgg19`).
  data: data_pipelines/fomm_pairs.py (mixture "name:weight,...": procedural, pyfeat, video_folders).
  """
  return ConfigDict(dict(
      model_params=dict(
          common_params=dict(num_kp=10, num_channels=3, estimate_jacobian=True),
          kp_detector_params=dict(temperature=0.1, block_expansion=32, max_features=256,
                                  scale_factor=0.5, num_blocks=4),
          generator_params=dict(block_expansion=32, max_features=256, num_down_blocks=2,
                                num_bottleneck_blocks=3, estimate_occlusion_map=True,
                                dense_motion_params=dict(block_expansion=32, max_features=256,
                                                         num_blocks=4, scale_factor=0.5))),
      align_corners=False,  # of the model's warps; see models/backbones/fomm.py (False: as loaded)
      transform=dict(sigma_affine=0.05, sigma_tps=0.005, points_tps=5),
      loss=dict(scales=(1.0, 0.5, 0.25, 0.125), reconstruction="l1", w_reconstruction=10.0,
                vgg_checkpoint="", w_perceptual=(10.0, 10.0, 10.0, 10.0, 10.0),
                w_equivariance_value=10.0, w_equivariance_jacobian=10.0),
      augment=dict(flip=True, time_flip=True),
      data=dict(mixture="procedural:1,pyfeat:1", heldout_fraction=0.2, segment_frames=48,
                crop="face", pyfeat_clips=("single_face.mp4", "WolfgangLanger_Pexels.mp4"),
                supersample=2, macro_amplitude_px=(2.0, 8.0), max_aus=3, head_shift=0.04,
                head_rotate_deg=6.0, head_scale=0.06,
                video_folders_dir="", video_folders_config="face256"),
  ))


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
  if config.task == "fomm":
    if "fomm" not in config:
      raise ValueError("config.task='fomm' needs the config.fomm fields: start from "
                       "configs/fomm_small.py (or config_lib.fomm_config())")
    from magplus_jax import fomm_training  # pylint: disable=g-import-not-at-top
    fomm_training.validate(config)
  div = 2 ** (config.model.levels - 1)
  if config.task != "fomm" and config.data.image_size % div:
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
  output = config.model.get("output", magnifier.OUTPUTS[0])
  if config.get("loss", {}).get("w_parts", 0.0) and output != "lagrangian":
    raise ValueError(f"config.loss.w_parts={config.loss.w_parts} scores the parts of the "
                     f"lagrangian output; config.model.output is {output!r}")
  if "evaluate" in config:
    for alpha in config.evaluate.alphas:
      if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"config.evaluate.alphas contains {alpha}: alpha must be finite and > 0")
