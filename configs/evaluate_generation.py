"""Generation evaluation: the whole pipeline on procedural micro clips whose motion is exact.

  python -m magplus_jax.main --config configs/evaluate_generation.py --workdir W \
      [--config.generate.magplus_checkpoint=runs/magplus --config.generate.demag_checkpoint=runs/demag]
      [--config.evaluate_generation.num_clips=16] [--config.generate.alpha=8]
      [--config.backbone.name=fomm --config.backbone.checkpoint=converted/fomm --config.backbone.image_size=256]

Everything of configs/generate.py (backbone, flow, magnifier checkpoints, alpha calibration, chunk)
applies; magnifiers missing from the config are taken from <workdir>/magplus and <workdir>/demag,
else the shipped weights, exactly as `generate` does. arg = backbone name. Metrics:
magplus_jax/evaluation/generation.py.

  python -m magplus_jax.main --config configs/evaluate_generation.py:fomm_small --workdir W

is the paper's experiment with the FOMM trained here (shipped): the raw micro driver through the
backbone alone, MagPlus -> FOMM -> DeMagPlus, and the classical pre-magnifications (linear,
Eulerian, phase) in the same pipeline, on micro clips of grace_hopper, the face fomm_small's
training held out, in self-reenactment (source = the driver's frame 0: the setting FOMM is trained
in, so that what is measured is motion transfer, not identity transfer).
"""
import importlib.util
import os

import ml_collections


def _generate_config(arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate.py")
  spec = importlib.util.spec_from_file_location("_magplus_generate_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg=None):
  config = _generate_config(arg)
  config.mode = "evaluate_generation"
  config.evaluate_generation = ml_collections.ConfigDict(dict(
      num_clips=8,
      num_frames=16,
      # procedural clips (data_pipelines/micro_clips.py); seeds: config.seed, index 0..num_clips-1
      faces=("astronaut", "grace_hopper"),
      micro_amplitude_px=(0.1, 1.0),
      max_aus=2,
      # "other": the other bundled face photo (cross identity, the use case); "same": the driver's
      # frame 0 (self reenactment); or a path to a face photo.
      source="other",
      # magplus, backbone (identity magnifiers: the baseline), eulerian, phase, linear (analytic
      # first-order reference)
      methods=("magplus", "backbone"),
      face_metrics=True,    # dlib landmarks + identity when dlib is installed (else logged, skipped)
      videos=1,             # side-by-side videos of the first `videos` clips, one per method
      out="evaluate_generation"))  # <workdir>/<out>.json and .md
  if arg == "fomm_small":
    config.evaluate_generation.update(dict(
        num_clips=16, faces=("grace_hopper",), source="same",
        methods=("backbone", "magplus", "linear", "eulerian", "phase")))
  return config
