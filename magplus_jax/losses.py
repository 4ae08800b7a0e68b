"""The self-supervised magnification objective (FlowMag), through a frozen flow network F.

  L = w_mag   * L1(F(I_ref, pred), alpha * F(I_ref, I_t))
    + w_color * L1(warp(pred, F(I_ref, pred)), warp(I_t, F(I_ref, I_t)))
    + w_pixel * L1(pred, exact magnified frame)            (ablation; procedural data only)

The magnification term asks for the right motion; the colour term asks that, once that motion is
undone, the prediction looks like the input (so the network cannot cheat with any texture that
fools F). alpha is [B] or a per-pixel map [B, H, W] (region-targeted magnification); the loss is the
same expression either way. F's weights are closed over and never trained; the input's own flow
carries no gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from magplus_jax.evaluation import metrics
from magplus_jax.models import resample
from magplus_jax.models.flow import FlowEstimator

Array = jax.Array


def alpha_map(alpha: Array) -> Array:
  """[B] or [B, H, W] -> broadcastable against [B, H, W, C]."""
  return alpha[:, None, None, None] if alpha.ndim == 1 else alpha[..., None]


def magnification_loss(flow: FlowEstimator, ref: Array, frame: Array, pred: Array, alpha: Array,
                       loss_config, target: Array | None = None) -> tuple[Array, dict]:
  """Returns (scalar loss, dict of its terms). ref, frame, pred, target: [B, H, W, 3]."""
  b = ref.shape[0]
  # One flow call on the interleaved pairs (ref->frame, ref->pred): half the launches, same
  # numbers; interleaving (not concatenating) keeps each example's pair on its own device when the
  # batch is sharded (concatenation made XLA permute whole images between TPU chips).
  pair = lambda x, y: jnp.stack([x, y], axis=1).reshape((2 * b,) + x.shape[1:])
  flows = flow(pair(ref, ref), pair(frame, pred)).reshape((b, 2) + frame.shape[1:3] + (2,))
  flow_in = jax.lax.stop_gradient(flows[:, 0])
  flow_pred = flows[:, 1]
  l_mag = jnp.mean(jnp.abs(flow_pred - alpha_map(alpha) * flow_in))
  l_color = jnp.mean(jnp.abs(resample.warp(pred, flow_pred)
                             - jax.lax.stop_gradient(resample.warp(frame, flow_in))))
  terms = {"loss_mag": l_mag, "loss_color": l_color}
  loss = loss_config.w_mag * l_mag + loss_config.w_color * l_color
  if loss_config.get("w_pixel", 0.0) and target is not None:
    l_pixel = jnp.mean(jnp.abs(pred - target))
    terms["loss_pixel"] = l_pixel
    loss = loss + loss_config.w_pixel * l_pixel
  terms["motion_error"] = metrics.motion_error(flow_pred, flow_in, alpha)
  terms["loss"] = loss
  return loss, terms
