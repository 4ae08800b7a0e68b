"""The one trainer: MagPlus / DeMagPlus / the shared network, on any mesh, resumable.

Read top to bottom: setup -> mesh -> data -> model and optimizer -> sharded init -> train step ->
restore -> loop (eval, sample images, checkpoints, preemption, NaN guard).

The state is a plain pytree {"params", "model_state", "opt_state", "step", "rng"} of the magnifier's
NNX variables as pure dicts, so the jitted step, the shardings and orbax all see one simple tree.
Determinism: the data order comes from config.seed (per process), the step rng is
fold_in(key(config.seed), step); a resumed run replays exactly what an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from magplus_jax import calibration, checkpointing, config_lib, losses, sharding
from magplus_jax.evaluation import metrics
from magplus_jax.models import magnifier
from magplus_jax.models.flow import get_flow

# ================================================================================================
# Pieces
# ================================================================================================


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  lr = opt.learning_rate
  if opt.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif opt.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(opt.warmup_steps, 1), max(total_steps, opt.warmup_steps + 1),
        end_value=lr * opt.end_lr_fraction)
  else:
    raise ValueError(f"config.optimizer.schedule={opt.schedule!r}: choose constant or cosine")
  if opt.name == "adam":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  elif opt.name == "sgd":
    tx = optax.sgd(schedule, momentum=opt.b1)
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r}: choose adam or sgd")
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx


def data_config_for(config) -> ml_collections.ConfigDict:
  """config.data with the alpha range of config.task filled in (alpha_min, alpha_max)."""
  dc = ml_collections.ConfigDict(config.data.to_dict())
  dc.alpha_min, dc.alpha_max = config_lib.alpha_range(config)
  return dc


def augment(batch: dict, rng: jax.Array, flip: bool) -> dict:
  """Random horizontal flip per example (images, exact frames, alpha maps and flows alike)."""
  if not flip:
    return batch
  b = batch["ref"].shape[0]
  do = jax.random.bernoulli(rng, 0.5, (b,))
  out = {}
  for k, v in batch.items():
    if v.ndim >= 3 and v.shape[1:3] == batch["ref"].shape[1:3]:
      f = v[:, :, ::-1]
      if k == "flow":
        f = f * jnp.array([-1.0, 1.0], v.dtype)
      v = jnp.where(do.reshape((b,) + (1,) * (v.ndim - 1)), f, v)
    out[k] = v
  return out


def batch_summary(batch: dict) -> str:
  return "; ".join(f"{k}: shape {tuple(v.shape)} min {np.nanmin(v):.4g} max {np.nanmax(v):.4g} "
                   f"nan {int(np.isnan(v).sum())}" for k, v in batch.items()
                   if np.issubdtype(np.asarray(v).dtype, np.floating))


def make_train_step(graphdef, tx, flow, config):
  nan_skip = config.nan_policy == "skip"

  def train_step(state, batch, flow_params):
    flow_ = dataclasses.replace(flow, params=flow_params)
    rng = jax.random.fold_in(state["rng"], state["step"])
    batch = augment(batch, rng, config.augment.flip)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["model_state"])
      pred = model(batch["ref"], batch["frame"], batch["alpha"], train=True)
      loss, terms = losses.magnification_loss(flow_, batch["ref"], batch["frame"], pred,
                                               batch["alpha"], config.loss, batch.get("magnified"))
      return loss, (terms, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

    (_, (terms, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "model_state": model_state,
           "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
    terms["grad_norm"] = optax.global_norm(grads)
    # The update too: a finite gradient can still make NaN parameters (e.g. a NaN learning rate).
    finite = (jnp.isfinite(terms["loss"]) & jnp.isfinite(terms["grad_norm"])
              & jnp.isfinite(optax.global_norm(updates)))
    terms["finite"] = finite
    if nan_skip:  # keep the old parameters, still advance the step (the batch is consumed)
      keep = {k: v for k, v in state.items() if k != "step"}
      new = {**jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                            {k: new[k] for k in keep}, keep), "step": new["step"]}
    return new, terms

  return train_step


def make_eval_step(graphdef, flow):
  def eval_step(state, batch, flow_params):
    flow_ = dataclasses.replace(flow, params=flow_params)
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    pred = model(batch["ref"], batch["frame"], batch["alpha"], train=False)
    b = pred.shape[0]
    f = flow_(jnp.concatenate([batch["ref"]] * 3),
              jnp.concatenate([batch["frame"], pred, batch["magnified"]]))
    # The motion the network is trained to produce, as F measures it: the calibration target.
    exact = jnp.percentile(jnp.linalg.norm(f[2 * b:], axis=-1).reshape(b, -1),
                           calibration.PERCENTILE, axis=1)
    out = {"target_motion": jnp.median(exact),
           "motion_error": metrics.motion_error(f[b:2 * b], f[:b], batch["alpha"]),
           "mag_error": metrics.mag_error(f[b:2 * b], f[:b], batch["alpha"]),
           "psnr": metrics.psnr(pred, batch["magnified"]),
           "ssim": metrics.ssim(pred, batch["magnified"])}
    return out, pred
  return eval_step


# ================================================================================================
# The trainer
# ================================================================================================


@dataclasses.dataclass
class Trainer:
  """Everything the loop, the AOT pod check and the tests need, built once for a config and mesh."""
  graphdef: Any
  flow: Any
  abstract_state: Any  # ShapeDtypeStructs carrying the state's NamedShardings
  state_shardings: Any
  batch_sharding: Any
  init: Callable  # () -> sharded state
  train_step: Callable  # (state, batch, flow_params) -> (state, metrics); jitted, donates state
  eval_step: Callable  # (state, batch, flow_params) -> (metrics, prediction); jitted


def build_trainer(config: ml_collections.ConfigDict, mesh, flow=None) -> Trainer:
  """Model, optimizer, shardings and the jitted steps; nothing is computed yet."""
  flow = get_flow(config.flow) if flow is None else flow
  tx = make_optimizer(config.optimizer, config.total_steps)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: magnifier.create(config.model, config.seed)))

  def init():
    model = magnifier.create(config.model, config.seed)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return {"params": params, "model_state": nnx.to_pure_dict(rest), "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(config.seed)}

  abstract = jax.eval_shape(init)
  state_sh = sharding.tree_shardings(abstract, config.sharding_rules, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  flow_sh = jax.tree.map(lambda _: rep, flow.params)
  return Trainer(
      graphdef=graphdef, flow=flow,
      abstract_state=jax.tree.map(
          lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh),
      state_shardings=state_sh, batch_sharding=batch_sh,
      init=jax.jit(init, out_shardings=state_sh),
      train_step=jax.jit(make_train_step(graphdef, tx, flow, config),
                         in_shardings=(state_sh, batch_sh, flow_sh),
                         out_shardings=(state_sh, rep), donate_argnums=(0,)),
      eval_step=jax.jit(make_eval_step(graphdef, flow), in_shardings=(state_sh, batch_sh, flow_sh)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config.task's network; returns the final eval metrics."""
  # ---------------------------------------------------------------- setup
  config_lib.validate(config)
  from data_pipelines import loader  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed()
  pidx, pcount = jax.process_index(), jax.process_count()
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=pidx > 0)
  if pidx == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size, pcount)

  # ---------------------------------------------------------------- data
  dc = data_config_for(config)
  train_iter = iter(loader.make_dataset(dc, split="train", seed=config.seed,
                                        global_batch_size=config.batch_size,
                                        process_index=pidx, process_count=pcount))
  eval_batches = [sharding.global_batch(b, mesh) for b in loader.make_eval_dataset(
      dc, seed=config.seed, global_batch_size=config.batch_size, process_index=pidx,
      process_count=pcount)]

  # ---------------------------------------------------------------- model, optimizer, sharded init
  trainer = build_trainer(config, mesh)
  flow_params = trainer.flow.params
  state = trainer.init()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  logging.info("magnifier: %d parameters", n_params)

  # ---------------------------------------------------------------- restore
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                         keep=config.checkpoint.keep,
                                         keep_every=config.checkpoint.keep_every,
                                         async_save=config.checkpoint.async_save)
  restored = ckpt.restore_latest(trainer.abstract_state, train_iter, log=logging.warning)
  if restored is not None:
    step0, state, train_iter = restored
    logging.warning("resuming from checkpoint step %d in %s", step0, ckpt.directory)
  else:
    step0 = 0
    logging.info("no checkpoint in %s: starting from scratch", ckpt.directory)
  if step0 >= config.total_steps:
    logging.warning("checkpoint step %d >= config.total_steps=%d: nothing to train; raise "
                    "--config.total_steps to continue", step0, config.total_steps)

  # ---------------------------------------------------------------- loop
  stop = {"sigterm": False}
  old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True))
  hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)]
  if config.profile and pidx == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5,
                                          profile_duration_ms=None))
  last = config.total_steps if not config.stop_after_steps else min(config.total_steps,
                                                                      config.stop_after_steps)
  eval_metrics, pending, history, skipped = {}, None, [], 0
  step = step0
  try:
    for step in range(step0 + 1, last + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = next(train_iter)
        state, terms = trainer.train_step(state, sharding.global_batch(batch, mesh),
                                           flow_params)
      if pending is not None:  # check the previous step's flag: keeps dispatch asynchronous
        _check_finite(*pending, config, ckpt)
      pending = (step, terms, batch)
      history.append(terms)  # device arrays: fetched together at log time, no per-step sync
      for h in hooks:
        h(step)
      if step % config.log_every == 0 or step == last:
        history = jax.device_get(history)
        skipped += sum(int(not h["finite"]) for h in history)
        scalars = {k: float(np.mean([h[k] for h in history])) for k in history[0] if k != "finite"}
        scalars["skipped_steps"] = skipped  # with nan_policy=skip: steps whose update was dropped
        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        history = []
      if config.eval_every and (step % config.eval_every == 0 or step == last):
        eval_metrics = _evaluate(trainer.eval_step, state, flow_params, eval_batches, writer,
                                 step)
      if step % config.checkpoint.every == 0 or step == last or stop["sigterm"]:
        _check_finite(*pending, config, ckpt)
        ckpt.save(step, state, train_iter, force=True)
      if stop["sigterm"]:
        logging.warning("SIGTERM: checkpoint of step %d written to %s; exiting", step,
                        ckpt.directory)
        break
  finally:
    ckpt.close()
    writer.flush()
    signal.signal(signal.SIGTERM, old_handler)
  if eval_metrics and pidx == 0:
    calibration.save(workdir, eval_metrics["target_motion"], task=config.task, step=step,
                     flow=config.flow.name)
  if eval_metrics:
    logging.info("final step %d: %s", step,
                 ", ".join(f"{k}={v:.4f}" for k, v in sorted(eval_metrics.items())))
  return eval_metrics


def _check_finite(step, terms, batch, config, ckpt):
  if config.nan_policy == "stop" and not bool(terms["finite"]):
    ckpt.wait()
    raise FloatingPointError(
        f"non-finite loss or gradient at step {step} (loss={float(terms['loss'])}, "
        f"grad_norm={float(terms['grad_norm'])}); stopping with the last good checkpoint "
        f"(step {ckpt.latest_step()}) kept. Offending batch: {batch_summary(batch)}")


def _evaluate(eval_step, state, flow_params, eval_batches, writer, step) -> dict:
  sums, preds = {}, None
  for batch in eval_batches:
    out, pred = eval_step(state, batch, flow_params)
    for k, v in jax.device_get(out).items():
      sums[k] = sums.get(k, 0.0) + float(v) / len(eval_batches)
    if preds is None:
      preds = (batch, pred)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in sums.items()})
  batch, pred = preds
  n = min(4, pred.shape[0])
  row = np.concatenate([sharding.to_host(x)[:n] for x in (batch["ref"], batch["frame"], pred,
                                                          batch["magnified"])], axis=2)
  writer.write_images(step, {"samples/ref|frame|pred|exact": np.clip(row, 0, 1)})
  return sums
