"""The one trainer: MagPlus / DeMagPlus / the shared network, and FOMM, on any mesh, resumable.

Read top to bottom: pieces -> tasks -> train step -> trainer (setup -> mesh -> task, model and
sharded init -> data -> restore -> loop: eval, sample images, checkpoints, preemption, NaN guard).

What differs between the networks is a `Task` (config.task): the model, the loss inside the step,
the eval step, the sample images, the data and what is written at the end. MagPlus, DeMagPlus and
the shared network are `MagnifierTask` below; FOMM is magplus_jax/fomm_training.py. Everything
else is one code path for all of them.

The state is a plain pytree {"params", "model_state", "opt_state", "step", "rng"} of the model's
NNX variables as pure dicts, so the jitted step, the shardings and orbax all see one simple tree.
Determinism: the data order comes from config.seed (per process), the step rng is
fold_in(key(config.seed), step); a resumed run replays exactly what an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable, Protocol

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
from magplus_jax.models import lagrangian, magnifier
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


# ================================================================================================
# Tasks: what differs between the networks this one loop trains
# ================================================================================================


class Task(Protocol):
  """The task-specific half of training; the loop, sharding, checkpoints, resume, metric writers,
  NaN guard and determinism are shared. A task is built once per run from the config.

  frozen: a network that is not trained but feeds the loss, with `.params` (MagPlus: the flow
  estimator F; FOMM: the optional VGG-19); its params enter every step replicated.
  create_model(): the trained nnx.Module, a pure function of config.seed.
  loss(model, batch, rng, frozen_params) -> (scalar loss, terms incl. "loss"): traced inside
  value_and_grad; the model's non-Param variables after the call (BatchNorm statistics) become the
  new model_state. rng is fold_in(key(config.seed), step).
  evaluate(model, batch, frozen_params) -> (scalar metrics, prediction pytree): eval mode.
  sample_images(batch, prediction) -> {name: [N, H, W', 3] in [0, 1]} for the metric writer.
  datasets(process_index, process_count) -> (checkpointable train iterator, eval batches).
  finish(workdir, eval_metrics, step): process 0, after the last checkpoint is written.
  """
  name: str
  frozen: Any

  def create_model(self) -> nnx.Module: ...
  def loss(self, model, batch, rng, frozen_params) -> tuple[jax.Array, dict]: ...
  def evaluate(self, model, batch, frozen_params) -> tuple[dict, Any]: ...
  def sample_images(self, batch, prediction) -> dict: ...
  def datasets(self, process_index: int, process_count: int) -> tuple[Any, Any]: ...
  def finish(self, workdir: str, eval_metrics: dict, step: int) -> None: ...


@dataclasses.dataclass
class MagnifierTask:
  """MagPlus / DeMagPlus / the shared network (config.task magplus, demag, shared)."""
  config: ml_collections.ConfigDict
  frozen: Any  # the flow estimator F
  name: str = "magnifier"

  def create_model(self):
    return magnifier.create(self.config.model, self.config.seed)

  def loss(self, model, batch, rng, flow_params):
    flow_ = dataclasses.replace(self.frozen, params=flow_params)
    batch = augment(batch, rng, self.config.augment.flip)
    w_parts = self.config.loss.get("w_parts", 0.0)
    if not w_parts:
      pred = model(batch["ref"], batch["frame"], batch["alpha"], train=True)
      return losses.magnification_loss(flow_, batch["ref"], batch["frame"], pred, batch["alpha"],
                                       self.config.loss, batch.get("magnified"))
    # The same forward pass, kept in its two parts so the loss can score each (losses.py: why).
    f, alpha = model.motion(batch["ref"], batch["frame"], batch["alpha"], train=True)
    moved, ref_moved = lagrangian.parts(batch["ref"], batch["frame"], f, alpha)
    pred = lagrangian.blend(moved, ref_moved, alpha)
    loss, terms = losses.magnification_loss(flow_, batch["ref"], batch["frame"], pred,
                                            batch["alpha"], self.config.loss, batch["magnified"])
    terms["loss_parts"] = losses.parts_loss(moved, ref_moved, batch["magnified"])
    terms["loss"] = loss + w_parts * terms["loss_parts"]
    return terms["loss"], terms

  def evaluate(self, model, batch, flow_params):
    flow_ = dataclasses.replace(self.frozen, params=flow_params)
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

  def sample_images(self, batch, pred):
    n = min(4, pred.shape[0])
    row = np.concatenate([sharding.to_host(x)[:n] for x in (batch["ref"], batch["frame"], pred,
                                                            batch["magnified"])], axis=2)
    return {"samples/ref|frame|pred|exact": np.clip(row, 0, 1)}

  def datasets(self, process_index, process_count):
    from data_pipelines import loader  # pylint: disable=g-import-not-at-top
    c, dc = self.config, data_config_for(self.config)
    kw = dict(seed=c.seed, global_batch_size=c.batch_size, process_index=process_index,
              process_count=process_count)
    return (iter(loader.make_dataset(dc, split="train", **kw)), loader.make_eval_dataset(dc, **kw))

  def finish(self, workdir, eval_metrics, step):
    if eval_metrics:
      calibration.save(workdir, eval_metrics["target_motion"], task=self.config.task, step=step,
                       flow=self.config.flow.name)


def get_task(config: ml_collections.ConfigDict, flow=None) -> Task:
  """The Task of config.task; `flow` (MagPlus family) replaces the estimator built from config."""
  if config.task == "fomm":
    from magplus_jax import fomm_training  # pylint: disable=g-import-not-at-top
    return fomm_training.FOMMTask(config)
  return MagnifierTask(config, get_flow(config.flow) if flow is None else flow)


def make_train_step(task: Task, graphdef, tx, config):
  nan_skip = config.nan_policy == "skip"

  def train_step(state, batch, frozen_params):
    rng = jax.random.fold_in(state["rng"], state["step"])

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state["model_state"])
      loss, terms = task.loss(model, batch, rng, frozen_params)
      # Everything but the Params (BatchNorm running statistics, fixed buffers), as the call
      # left it.
      return loss, (terms, nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2]))

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


def make_eval_step(task: Task, graphdef):
  def eval_step(state, batch, frozen_params):
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    return task.evaluate(model, batch, frozen_params)
  return eval_step


# ================================================================================================
# The trainer
# ================================================================================================


@dataclasses.dataclass
class Trainer:
  """Everything the loop, the AOT pod check and the tests need, built once for a config and mesh."""
  task: Task
  graphdef: Any
  abstract_state: Any  # ShapeDtypeStructs carrying the state's NamedShardings
  state_shardings: Any
  batch_sharding: Any
  init: Callable  # () -> sharded state
  train_step: Callable  # (state, batch, frozen_params) -> (state, metrics); jitted, donates state
  eval_step: Callable  # (state, batch, frozen_params) -> (metrics, prediction); jitted

  @property
  def frozen(self):
    return self.task.frozen

  @property
  def flow(self):  # the MagPlus family's name for its frozen network
    return self.task.frozen


def build_trainer(config: ml_collections.ConfigDict, mesh, flow=None) -> Trainer:
  """Task, model, optimizer, shardings and the jitted steps; nothing is computed yet."""
  task = get_task(config, flow)
  tx = make_optimizer(config.optimizer, config.total_steps)
  graphdef = nnx.graphdef(nnx.eval_shape(task.create_model))

  def init():
    _, params, rest = nnx.split(task.create_model(), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return {"params": params, "model_state": nnx.to_pure_dict(rest), "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(config.seed)}

  abstract = jax.eval_shape(init)
  state_sh = sharding.tree_shardings(abstract, config.sharding_rules, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  frozen_sh = jax.tree.map(lambda _: rep, task.frozen.params)
  return Trainer(
      task=task, graphdef=graphdef,
      abstract_state=jax.tree.map(
          lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, state_sh),
      state_shardings=state_sh, batch_sharding=batch_sh,
      init=jax.jit(init, out_shardings=state_sh),
      train_step=jax.jit(make_train_step(task, graphdef, tx, config),
                         in_shardings=(state_sh, batch_sh, frozen_sh),
                         out_shardings=(state_sh, rep), donate_argnums=(0,)),
      eval_step=jax.jit(make_eval_step(task, graphdef),
                        in_shardings=(state_sh, batch_sh, frozen_sh)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config.task's network; returns the final eval metrics."""
  # ---------------------------------------------------------------- setup
  config_lib.validate(config)
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

  # ---------------------------------------------------------------- task, model, sharded init
  trainer = build_trainer(config, mesh)
  task, frozen_params = trainer.task, trainer.frozen.params
  state = trainer.init()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  logging.info("%s: %d parameters", task.name, n_params)

  # ---------------------------------------------------------------- data
  train_iter, eval_data = task.datasets(pidx, pcount)
  eval_batches = [sharding.global_batch(b, mesh) for b in eval_data]

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
                                           frozen_params)
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
        eval_metrics = _evaluate(trainer, state, frozen_params, eval_batches, writer, step)
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
  if pidx == 0:
    task.finish(workdir, eval_metrics, step)
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


def _evaluate(trainer, state, frozen_params, eval_batches, writer, step) -> dict:
  sums, first = {}, None
  for batch in eval_batches:
    out, pred = trainer.eval_step(state, batch, frozen_params)
    for k, v in jax.device_get(out).items():
      sums[k] = sums.get(k, 0.0) + float(v) / len(eval_batches)
    if first is None:
      first = (batch, pred)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in sums.items()})
  writer.write_images(step, trainer.task.sample_images(*first))
  return sums
