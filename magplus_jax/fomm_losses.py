"""FOMM's training losses (Siarohin et al. 2019, Sec. 3.3; the official GeneratorFullModel).

Re-derived from the paper and the official modules/model.py, not copied. Images are NHWC in [0, 1];
keypoints are (x, y) in FOMM's corner-aligned coordinates [-1, 1] (resample.make_coordinate_grid).

* Reconstruction over an image pyramid (scales 1, 1/2, 1/4, 1/8, each an anti-aliased downscale,
  keypoints.AntiAliasInterpolation2d as in the official ImagePyramide): "l1" compares the pixels
  of each level; "vgg19" compares VGG-19 relu1_1..relu5_1 features of each level (the official
  perceptual loss, weights from a user's converted checkpoint: models/vgg.py). The target side is
  constant (the official detaches it).
* Equivariance under a random transform T (the official `Transform`: an affine part
  theta = I + N(0, sigma_affine) plus a thin-plate-spline part with points_tps x points_tps
  control points on the coordinate grid and weights N(0, sigma_tps)): the keypoints of the
  driving frame D must be T applied to the keypoints of D warped by T (value loss, L1), and the
  jacobians must agree through T's own jacobian (jacobian loss, |I - J_D^-1 (J_T J_T(D))|).
  The TPS kernel is the official one: U(r) = r^2 log(r + 1e-6) with r the L1 distance to a
  control point, and the summed spline offset is added to both x and y.
  The frame is warped by the project's one grid_sample with align_corners=True and reflection
  padding: keypoints live on the corner-aligned grid, so a coordinate c must read pixel
  (c + 1)(W - 1)/2 for "T moves the keypoint at c to T(c)" to hold (the torch 1.0 behaviour the
  official code was written for; torch >= 1.3 reads the same call half a pixel off). With that,
  the identity transform reproduces the frame and both losses vanish.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from magplus_jax.models import resample
from magplus_jax.models.backbones.fomm import inverse_2x2
from magplus_jax.models.backbones.keypoints import AntiAliasInterpolation2d

Array = jax.Array


# ------------------------------------------------------------------------------ image pyramid
def image_pyramid(x: Array, scales) -> list[Array]:
  """[B, H, W, C] -> one anti-aliased downscale per scale (1 is the image itself)."""
  return [x if float(s) == 1.0 else AntiAliasInterpolation2d(x.shape[-1], float(s))(x)
          for s in scales]


def reconstruction_loss(prediction: Array, target: Array, scales, weight: float,
                        features: Callable[[Array], list[Array]] | None = None,
                        feature_weights=()) -> Array:
  """Sum over pyramid levels of the mean |prediction - target| (features: per feature map,
  weighted by feature_weights; None: the pixels, weighted by `weight`). [B, H, W, C] each."""
  total = 0.0
  for p, t in zip(image_pyramid(prediction, scales), image_pyramid(target, scales)):
    t = jax.lax.stop_gradient(t)
    if features is None:
      total = total + weight * jnp.mean(jnp.abs(p - t))
    else:
      for w, fp, ft in zip(feature_weights, features(p), features(t)):
        total = total + w * jnp.mean(jnp.abs(fp - jax.lax.stop_gradient(ft)))
  return total


# ------------------------------------------------------------------------------ the transform
@struct.dataclass
class Transform:
  """A batch of affine + TPS warps of FOMM's coordinate square.

  theta [B, 2, 3] (affine, x' = theta[:, :2] x + theta[:, 2]); control_points [P, 2];
  control_params [B, P] (TPS weights; zeros: the affine part alone)."""
  theta: Array
  control_points: Array
  control_params: Array


def _control_points(points_tps: int) -> Array:
  return resample.make_coordinate_grid(points_tps, points_tps).reshape(-1, 2)


def random_transform(rng: Array, batch: int, sigma_affine: float = 0.05, sigma_tps: float = 0.005,
                     points_tps: int = 5) -> Transform:
  """The official Transform's distribution (vox-256 transform_params as defaults)."""
  ka, kt = jax.random.split(rng)
  theta = jnp.eye(2, 3)[None] + sigma_affine * jax.random.normal(ka, (batch, 2, 3))
  params = sigma_tps * jax.random.normal(kt, (batch, points_tps ** 2))
  return Transform(theta, _control_points(points_tps), params)


def identity_transform(batch: int, points_tps: int = 5) -> Transform:
  return Transform(jnp.broadcast_to(jnp.eye(2, 3), (batch, 2, 3)), _control_points(points_tps),
                   jnp.zeros((batch, points_tps ** 2)))


def _warp_point(theta: Array, points: Array, params: Array, c: Array) -> Array:
  """One coordinate [2] through one warp (theta [2, 3], points [P, 2], params [P])."""
  out = theta[:, 0] * c[0] + theta[:, 1] * c[1] + theta[:, 2]
  r = jnp.sum(jnp.abs(c[None] - points), axis=-1)  # L1 distance, as the official code
  return out + jnp.sum(params * r ** 2 * jnp.log(r + 1e-6))


def warp_coordinates(t: Transform, coords: Array) -> Array:
  """coords [B, N, 2] -> T(coords) [B, N, 2], each batch element through its own warp."""
  per_point = jax.vmap(_warp_point, in_axes=(None, None, None, 0))
  return jax.vmap(per_point, in_axes=(0, None, 0, 0))(t.theta, t.control_points,
                                                      t.control_params, coords)


def warp_jacobian(t: Transform, coords: Array) -> Array:
  """dT/dc at coords [B, N, 2] -> [B, N, 2, 2] (row i: the gradient of output coordinate i)."""
  jac = jax.jacfwd(_warp_point, argnums=3)
  per_point = jax.vmap(jac, in_axes=(None, None, None, 0))
  return jax.vmap(per_point, in_axes=(0, None, 0, 0))(t.theta, t.control_points,
                                                      t.control_params, coords)


def transform_frame(t: Transform, frame: Array) -> Array:
  """frame [B, H, W, C] -> the frame seen through T: out(c) = frame(T(c)) (see module doc)."""
  b, h, w, _ = frame.shape
  grid = jnp.broadcast_to(resample.make_coordinate_grid(h, w, frame.dtype).reshape(1, h * w, 2),
                          (b, h * w, 2))
  grid = warp_coordinates(t, grid).reshape(b, h, w, 2)
  return resample.grid_sample(frame, grid, align_corners=True, padding="reflection")


def equivariance_losses(kp_detector: Callable[[Array], dict], frame: Array, kp_frame: dict,
                        t: Transform) -> tuple[Array, Array, Array]:
  """(value loss, jacobian loss, transformed frame), both losses unweighted means.

  kp_detector: frame [B, H, W, C] -> {"value" [B, K, 2], "jacobian" [B, K, 2, 2]};
  kp_frame: its output on `frame` (computed once by the caller, who also renders from it)."""
  warped = transform_frame(t, frame)
  kp_t = kp_detector(warped)
  value = jnp.mean(jnp.abs(kp_frame["value"] - warp_coordinates(t, kp_t["value"])))
  if "jacobian" not in kp_frame:
    return value, jnp.zeros(()), warped
  jac_t = jnp.matmul(warp_jacobian(t, kp_t["value"]), kp_t["jacobian"],
                     precision=jax.lax.Precision.HIGHEST)
  rel = jnp.matmul(inverse_2x2(kp_frame["jacobian"]), jac_t, precision=jax.lax.Precision.HIGHEST)
  jacobian = jnp.mean(jnp.abs(jnp.eye(2) - rel))
  return value, jacobian, warped


# ------------------------------------------------------------------------------ the full loss
def generator_losses(model: Any, source: Array, driving: Array, t: Transform, loss_cfg,
                     features: Callable[[Array], list[Array]] | None = None
                     ) -> tuple[Array, dict, dict]:
  """The official generator objective without the GAN terms (vox-256 trains with
  generator_gan 0 too). model: fomm.FOMM (train or eval mode, as the caller set it);
  source, driving [B, H, W, 3]. Returns (loss, weighted terms incl. "loss", generator outputs).

  The keypoint detector runs separately on source, driving and the warped driving frame, as the
  official model does: in train mode each call normalises by its own batch statistics and moves
  the running statistics once (three updates per step, as there)."""
  only = lambda kp: {k: v for k, v in kp.items() if k in ("value", "jacobian")}
  kp_source = only(model.kp_detector(source))
  kp_driving = only(model.kp_detector(driving))
  out = model.generator(source, kp_driving, kp_source)
  rec = reconstruction_loss(out["prediction"], driving, loss_cfg.scales,
                            float(loss_cfg.w_reconstruction), features,
                            tuple(loss_cfg.w_perceptual))
  terms = {"reconstruction": rec}
  w_val, w_jac = float(loss_cfg.w_equivariance_value), float(loss_cfg.w_equivariance_jacobian)
  if w_val or w_jac:
    value, jacobian, _ = equivariance_losses(lambda x: only(model.kp_detector(x)), driving,
                                             kp_driving, t)
    terms["equivariance_value"] = w_val * value
    terms["equivariance_jacobian"] = w_jac * jacobian
  terms["loss"] = sum(terms.values())
  out = dict(out, kp_source=kp_source, kp_driving=kp_driving)
  return terms["loss"], terms, out
