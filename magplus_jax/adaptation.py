"""Test-time adaptation: a few steps of the self-supervised loss on the clip being magnified.

FlowMag fine-tunes its magnifier on the test video itself; the loss needs no ground truth (it only
asks F(I_0, pred_t) = alpha F(I_0, I_t) and colour consistency), so a trained MagPlus can be adapted
to a real micro-expression clip whose textures, lighting and motion the procedural training data
never showed. The adapted weights are used for that clip only; the checkpoint is not changed.

Works on any learned Magnifier whose params are (trainable pytree, rest) as `magnifier.build`
returns: the loss is taken through the interface's own `magnify_clip`, so repeated application
(alpha above alpha_max) is adapted as it is run. Each step uses a fixed, evenly spaced subset of
the clip's frames (`frames_per_step`, frame 0 excluded: it is the reference), cycling through the
clip; the step is one jit, so adaptation costs `steps` train steps of that batch size.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from magplus_jax import losses
from magplus_jax.models.flow import FlowEstimator
from magplus_jax.models.magnifiers import Magnifier


def _frame_batches(num_frames: int, per_step: int, steps: int) -> np.ndarray:
  """[steps, per_step] frame indices in 1..T-1, a strided cycle through the clip (deterministic)."""
  idx = np.arange(1, num_frames)
  per_step = min(per_step, idx.size)
  offsets = np.arange(steps)[:, None] + np.arange(per_step)[None] * max(idx.size // per_step, 1)
  return idx[offsets % idx.size]


def adapt(mag: Magnifier, frames, alpha: float, flow: FlowEstimator, loss_config, *, steps: int,
          learning_rate: float = 1e-4, frames_per_step: int = 4) -> Magnifier:
  """frames [T, H, W, 3] in [0, 1] (T >= 2), alpha > 0 -> the magnifier adapted to this clip."""
  if steps <= 0:
    return mag
  if not (isinstance(mag.params, tuple) and len(mag.params) == 2):
    raise ValueError(f"test-time adaptation needs a learned magnifier; {mag.name!r} has no "
                     "trainable parameters")
  frames = jnp.asarray(frames, jnp.float32)
  if frames.ndim != 4 or frames.shape[0] < 2:
    raise ValueError(f"test-time adaptation needs a clip [T>=2, H, W, 3]; got {frames.shape}")
  params, rest = mag.params
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, clip):  # clip [1, 1 + k, H, W, 3]: reference, then k frames
    k = clip.shape[1] - 1

    def loss_fn(p):
      pred = mag.magnify_clip((p, rest), clip, jnp.full((1,), alpha, jnp.float32))[0, 1:]
      ref = jnp.broadcast_to(clip[0, :1], pred.shape)
      loss, _ = losses.magnification_loss(flow, ref, clip[0, 1:], pred,
                                          jnp.full((k,), alpha, jnp.float32), loss_config)
      return loss

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  batches = _frame_batches(frames.shape[0], frames_per_step, steps)
  step_losses = []  # kept on device: one transfer at the end, no sync per step
  for idx in batches:
    clip = jnp.concatenate([frames[:1], frames[idx]])[None]
    params, opt_state, loss = step(params, opt_state, clip)
    step_losses.append(loss)
  first, last = float(step_losses[0]), float(step_losses[-1])
  if not np.isfinite(last):
    raise FloatingPointError(f"test-time adaptation of {mag.name!r} diverged (loss {last}); lower "
                             "config.generate.tta_learning_rate or set tta_steps=0")
  logging.info("test-time adaptation of %s: %d steps, loss %.4f -> %.4f", mag.name, steps, first,
               last)
  return dataclasses.replace(mag, params=(params, rest))
