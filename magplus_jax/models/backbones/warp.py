"""The training-free warp backbone: moves the source the way the driver moved, pixel for pixel.

For each driving frame D_t the backward flow b_t = F(D_t, D_ref) says where each pixel of D_t came
from in D_ref; the output samples the source there: O_t(p) = S(p + b_t(p)). It needs no weights
(only the project's flow estimator), so the embedded default runs end to end offline. It assumes the
source and driver are aligned crops of similar faces (the generation pipeline crops both with one
box each); it transfers motion, not expression semantics, and has no occlusion reasoning - that is
what the learned backbones add. Samples beyond the border take the nearest edge pixel, so small
motions do not pull black borders in.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from magplus_jax.models import resample
from magplus_jax.models.backbones import Backbone


def build(backbone_config, flow) -> Backbone:
  if flow is None:
    raise ValueError("the warp backbone needs a flow estimator (config.flow)")
  flow_fn = flow.flow_fn

  def animate(params, source, driving, driving_ref):
    """source [B,H,W,3], driving [B,T,H,W,3], driving_ref [B,H,W,3] -> [B,T,H,W,3]."""
    b, t, h, w, c = driving.shape
    cur = driving.reshape(b * t, h, w, c)
    ref = jnp.repeat(driving_ref, t, axis=0)
    back = flow_fn(params, cur, ref)
    coords = resample.pixel_grid(h, w, back.dtype)[None] + back
    x = jnp.clip(coords[..., 0], 0.0, w - 1.0)
    y = jnp.clip(coords[..., 1], 0.0, h - 1.0)
    out = resample.sample_pixels(jnp.repeat(source, t, axis=0), x, y)
    return out.reshape(b, t, h, w, c)

  return Backbone("warp", flow.params, animate, int(backbone_config.get("image_size", 256)))
