"""The one magnifier interface, shared by MagPlus / DeMagPlus and the classical baselines.

  magnify_clip(params, frames [B, T, H, W, 3], alpha [B] or [B, T, H, W] (per-pixel map))
      -> [B, T, H, W, 3]

Motion is magnified relative to the clip's first frame: output frame t shows frame 0 moved by
alpha x (the motion from frame 0 to frame t). Output frame 0 equals input frame 0 (MagPlus returns it
exactly, the classical methods up to float rounding). Frames are RGB in [0, 1]. Classical methods (Eulerian, phase-based) may use the
whole time axis (temporal band-pass); MagPlus works frame by frame against frame 0.

Magnifiers are chosen by name: "magplus" (a trained checkpoint, or an untrained network),
"identity" (no magnification, the baseline every method must beat), "eulerian", "phase".
Each non-trivial module exports `build(magnifier_config) -> Magnifier`.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
MagnifyFn = Callable[[Any, Array, Array], Array]

_MAGNIFIERS = {
    "magplus": "magplus_jax.models.magnifier",
    "eulerian": "magplus_jax.models.classical",
    "phase": "magplus_jax.models.classical",
}


@dataclasses.dataclass(frozen=True)
class Magnifier:
  name: str
  params: Any
  magnify_clip: MagnifyFn

  def __call__(self, frames: Array, alpha: Array) -> Array:
    return self.magnify_clip(self.params, frames, alpha)


def _identity(params, frames, alpha):
  del params, alpha
  return frames


IDENTITY = Magnifier("identity", {}, _identity)


def names() -> list[str]:
  return sorted(list(_MAGNIFIERS) + ["identity"])


def get_magnifier(magnifier_config) -> Magnifier:
  name = magnifier_config.name
  if name == "identity":
    return IDENTITY
  if name not in _MAGNIFIERS:
    raise ValueError(f"magnifier name {name!r} is unknown; choose one of {names()}")
  return importlib.import_module(_MAGNIFIERS[name]).build(magnifier_config)


def broadcast_alpha(alpha: Array, frames: Array) -> Array:
  """alpha [B] or [B, T, H, W] -> [B, T, H, W, 1], for per-pixel arithmetic on frames."""
  alpha = jnp.asarray(alpha, frames.dtype)
  if alpha.ndim == 1:
    return alpha[:, None, None, None, None]
  if alpha.ndim == 4:
    return alpha[..., None]
  raise ValueError(f"alpha must be [B] or [B, T, H, W]; got shape {alpha.shape}")
