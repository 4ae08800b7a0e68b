"""The one backbone interface: a frozen face-animation model.

  animate(params, source [B, H, W, 3], driving [B, T, H, W, 3], driving_ref [B, H, W, 3])
      -> frames [B, T, H, W, 3]        (all RGB in [0, 1], NHWC)

Motion is relative, as the official demos do it: frame t of the output shows the source moved the
way the driver moved from `driving_ref` to `driving[:, t]`. Backbones whose own driving signal is not
an image (MetaPortrait's landmarks, ...) derive it from the driving frames through the project's flow
interface. `animate` is pure and jittable; the generation pipeline calls it inside one jit per chunk
of frames.

Backbones are chosen by `config.backbone.name`; each module exports
`build(backbone_config, flow) -> Backbone` (flow: the FlowEstimator, for backbones that need one).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax

Array = jax.Array
AnimateFn = Callable[[Any, Array, Array, Array], Array]

_BACKBONES = {
    "warp": "magplus_jax.models.backbones.warp",
    "fomm": "magplus_jax.models.backbones.fomm",
    # the small FOMM trained here (configs/fomm_small.py), shipped in magplus_jax/pretrained
    "fomm_small": "magplus_jax.models.backbones.fomm",
    "fsrt": "magplus_jax.models.backbones.fsrt",
    "metaportrait": "magplus_jax.models.backbones.metaportrait",
    "emoportraits": "magplus_jax.models.backbones.emoportraits",
}


@dataclasses.dataclass(frozen=True)
class Backbone:
  name: str
  params: Any
  animate: AnimateFn
  image_size: int  # square input / output resolution the model works at

  def __call__(self, source: Array, driving: Array, driving_ref: Array) -> Array:
    return self.animate(self.params, source, driving, driving_ref)

  def bind_source(self, source: Array, driving_ref: Array) -> "Backbone":
    """Runs a backbone's per-clip source pass once (EMOPortraits: ~3.9 TFLOP) and returns a backbone
    whose `animate` reuses it; backbones without one return themselves."""
    del source, driving_ref
    return self


def names() -> list[str]:
  return sorted(_BACKBONES)


def get_backbone(backbone_config, flow=None) -> Backbone:
  name = backbone_config.name
  if name not in _BACKBONES:
    raise ValueError(f"config.backbone.name={name!r} is not a backbone; choose one of {names()}")
  return importlib.import_module(_BACKBONES[name]).build(backbone_config, flow)
