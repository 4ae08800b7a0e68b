"""The Lagrangian output's weight-free parts: the noise estimate, the reliability gate, and the
attenuation blend that DeMagPlus relies on (models/lagrangian.py has the why)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magplus_jax.models import lagrangian, magnifier


def _scene(n=64, seed=0):
  """A smooth random scene in [0.3, 0.7] (no clipping for the noise levels below)."""
  rng = np.random.default_rng(seed)
  x = rng.random((1, n // 8, n // 8, 3)).astype(np.float32)
  img = jax.image.resize(jnp.asarray(x), (1, n, n, 3), "cubic")
  return 0.3 + 0.4 * (img - img.min()) / (img.max() - img.min())


@pytest.mark.parametrize("sigma", [0.004, 0.02, 0.06])
def test_noise_std_estimates_white_noise(sigma):
  scene = jnp.concatenate([_scene(seed=s) for s in range(4)])
  rng = np.random.default_rng(1)
  ref = scene + sigma * rng.standard_normal(scene.shape).astype(np.float32)
  frame = scene + sigma * rng.standard_normal(scene.shape).astype(np.float32)
  est = np.asarray(lagrangian.noise_std(ref, frame))
  # 4 x 62^2 Laplacian samples per image: the mean of |.| has a relative std of ~1.5 %, and the
  # smooth scene leaks well under 1e-3 into the estimate; 12 % holds with room on any CPU.
  np.testing.assert_allclose(est, sigma, rtol=0.12)


def _random_head_net():
  net = magnifier.MagnifierUNet(levels=2, width=8, output="lagrangian", rngs=nnx.Rngs(0))
  net.head.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), net.head.kernel.shape)
  return net


def test_unmeasurable_motion_is_left_alone_for_any_weights():
  """Oh et al.'s noise test in small: 0.05 px under noise of std 30/255, alpha 200. The estimate
  is noise, alpha x it would scramble the frame; the gate cuts it, so the output is the input
  frame (the 'do nothing' baseline) rather than worse than it."""
  scene = _scene()
  rng = np.random.default_rng(2)
  moved = jnp.roll(scene, 1, axis=2) * 0.05 + scene * 0.95  # ~0.05 px of motion, sub-pixel
  sigma = 30.0 / 255.0
  ref = jnp.clip(scene + sigma * rng.standard_normal(scene.shape).astype(np.float32), 0, 1)
  frame = jnp.clip(moved + sigma * rng.standard_normal(scene.shape).astype(np.float32), 0, 1)
  out = _random_head_net()(ref, frame, jnp.array([200.0]))
  # The gate is exp(-(alpha^2 v / 4^2)^2) with alpha^2 v in the thousands of px^2 here: exactly 0
  # in float32, hence exactly the frame (bilinear sampling at integer positions).
  np.testing.assert_array_equal(out, frame)
  # Without noise the same motion is magnified: the output moves away from the frame.
  out_clean = _random_head_net()(scene, moved, jnp.array([200.0]))
  assert float(jnp.abs(out_clean - moved).max()) > 0.05


def test_gate_keeps_clean_motion_and_cuts_unreliable_motion():
  scales = jnp.ones((1, 8, 8, 2, len(lagrangian.BLUR_SIGMAS))) * 0.1   # |m| = 0.14 px
  quiet = jnp.ones_like(scales) * 1e-4
  noisy = jnp.ones_like(scales) * 0.1                                    # null as large as m
  alpha = jnp.full((1, 8, 8), 100.0)
  assert float(lagrangian.gate(scales, quiet, alpha).min()) > 0.99
  assert float(lagrangian.gate(scales, noisy, alpha).max()) < 1e-6
  # At alpha 1 the cut does not act (the Wiener factor alone: m^2 / (m^2 + 2 v) = 1/3).
  np.testing.assert_allclose(lagrangian.gate(scales, noisy, jnp.ones((1, 8, 8))), 1 / 3,
                             rtol=1e-5)


def _sinusoid(shift, n=64, period=32.0):
  x = jnp.arange(n, dtype=jnp.float32)
  row = 0.5 + 0.3 * jnp.sin(2 * np.pi * (x - shift) / period)
  return jnp.broadcast_to(row[None, None, :, None], (1, n, n, 3))


def _shift_of(img, n=64, period=32.0):
  """The horizontal shift of a sinusoid of _sinusoid's period, from its phase (inner columns)."""
  x = np.arange(n, dtype=np.float64)
  sl = slice(16, n - 16)  # exactly one period: sin and cos are orthogonal on it
  row = np.asarray(img[0, n // 2, :, 0], np.float64)[sl] - 0.5
  w = 2 * np.pi * x[sl] / period
  s, c = np.sum(row * np.sin(w)), np.sum(row * np.cos(w))
  return np.arctan2(-c, s) * period / (2 * np.pi)


def test_attenuation_blend_cancels_flow_error_to_first_order():
  """DeMagPlus at alpha 1/4 of a 4 px translation, told a motion 10 % too long. Warping I_t back
  by (1 - alpha) f alone leaves 0.3 px of error (7.5 x the tolerance the round trip needs at
  alpha 4 over 1 px); the blend with I_ref moved forward by alpha f cancels it to first order."""
  d, alpha, e = 4.0, 0.25, 0.1
  ref, frame = _sinusoid(0.0), _sinusoid(d)
  f = jnp.zeros((1, 64, 64, 2)).at[..., 0].set((1 + e) * d)
  a = jnp.full((1, 64, 64), alpha)
  out = lagrangian.magnify(ref, frame, f, a)
  frame_only = lagrangian.sample_at(frame, lagrangian.resample.pixel_grid(64, 64)[None]
                                    - (alpha - 1) * f)
  assert abs(_shift_of(frame) - d) < 1e-3            # the phase read-out itself is exact
  assert abs(_shift_of(frame_only) - alpha * d) > 0.25  # (1 - alpha) e d = 0.3 px
  # Two copies 0.4 px apart, weights 3/4 and 1/4: their phases average to the exact shift
  # (measured 1e-6 px for this sinusoid; other patterns keep a second-order residual).
  assert abs(_shift_of(out) - alpha * d) < 0.01
  # alpha >= 1 never reads I_ref: any reference gives the same output.
  a2 = jnp.full((1, 64, 64), 3.0)
  np.testing.assert_array_equal(lagrangian.magnify(ref, frame, f, a2),
                                lagrangian.magnify(ref * 0, frame, f, a2))


def test_motion_and_parts_rebuild_the_output():
  """losses.parts_loss scores the two parts of the output the network gives: model.motion and
  lagrangian.parts / blend must be that same output, for MagPlus and DeMagPlus alphas."""
  net = _random_head_net()
  ref = _scene(32, seed=2)
  frame = jnp.roll(ref, 1, axis=2)
  for alpha in (0.25, 4.0):
    a = jnp.full((1,), alpha)
    f, a_map = net.motion(ref, frame, a)
    moved, ref_moved = lagrangian.parts(ref, frame, f, a_map)
    # The same ops in the same order: equal to float32 rounding of the one resampling path.
    np.testing.assert_allclose(lagrangian.blend(moved, ref_moved, a_map), net(ref, frame, a),
                               atol=1e-6)
    assert float(jnp.max(jnp.abs(moved - ref_moved))) > 1e-3  # the parts differ: both matter


def test_parts_loss_needs_the_lagrangian_output():
  from magplus_jax import config_lib
  c = config_lib.base_config()
  c.loss.w_parts = 1.0
  c.model.output = "eulerian_gate"
  with pytest.raises(ValueError, match="w_parts"):
    config_lib.validate(c)
