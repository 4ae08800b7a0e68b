"""MagPlus through the magnifier interface: jitted once per repeat count, repeats follow alpha,
output frame 0 is input frame 0 exactly, per-pixel alpha maps (issue #18)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from magplus_jax.models import magnifier
from conftest import tiny_config

ALPHA_MAX, MAX_REPEATS = 4.0, 2  # reach: alpha up to 16 (and down to 1/16)


def _mag(**fields):
  c = tiny_config()
  cfg = dict(name="magplus", model=c.model.to_dict(), seed=0, alpha_max=ALPHA_MAX,
             max_repeats=MAX_REPEATS)
  cfg.update(fields)
  return magnifier.build(ml_collections.ConfigDict(cfg))


def _perturbed(params):
  """Random weights everywhere (the zero-initialised head would make the network the identity)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                   if jnp.issubdtype(x.dtype, jnp.floating) else x
                                   for x, k in zip(leaves, keys)])


def _frames(b=2, t=3, n=32):
  return jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (b, t, n, n, 3)), jnp.float32)


@pytest.fixture
def trace_count(monkeypatch):
  """Counts network applications traced or run eagerly (none once a jitted call is cached)."""
  calls = []
  orig = magnifier.MagnifierUNet.__call__

  def counting(self, *args, **kwargs):
    calls.append(1)
    return orig(self, *args, **kwargs)
  monkeypatch.setattr(magnifier.MagnifierUNet, "__call__", counting)
  return calls


def test_frame_zero_is_returned_exactly():
  mag, frames = _mag(), _frames()
  params = _perturbed(mag.params)
  for alpha in (10.0, 3.0, 0.1):
    out = mag.magnify_clip(params, frames, jnp.full((2,), alpha))
    np.testing.assert_array_equal(out[:, 0], frames[:, 0], err_msg=f"alpha {alpha}")
    assert float(jnp.abs(out[:, 1:] - frames[:, 1:]).max()) > 1e-3  # the network is not identity


def test_jitted_no_retrace_for_new_alpha_same_repeats(trace_count):
  mag, frames = _mag(), _frames()
  params = _perturbed(mag.params)
  a = mag.magnify_clip(params, frames, jnp.full((2,), 2.0))
  n1 = len(trace_count)
  assert n1 == 1  # one application traced (alpha 2 <= alpha_max: one repeat)
  b = mag.magnify_clip(params, frames, jnp.array([3.0, 3.5]))  # same repeat count: cached
  assert len(trace_count) == n1
  assert float(jnp.abs(a - b).max()) > 1e-4  # ... and the new alpha was used
  mag.magnify_clip(params, frames, jnp.full((2,), 9.0))  # two repeats: one new trace (2 calls)
  assert len(trace_count) == n1 + 2
  mag.magnify_clip(params, frames, jnp.full((2,), 12.0))
  assert len(trace_count) == n1 + 2


def test_repeats_follow_alpha_and_refuse_beyond_reach():
  mag, frames = _mag(), _frames()
  params = _perturbed(mag.params)
  fixed = {k: _mag(repeats=k).magnify_clip for k in (1, 2)}
  for alpha, k in ((3.0, 1), (9.0, 2), (1 / 9.0, 2), (16.0, 2)):
    a = jnp.full((2,), alpha)
    np.testing.assert_array_equal(mag.magnify_clip(params, frames, a),
                                  fixed[k](params, frames, a), err_msg=f"alpha {alpha}")
  a = jnp.full((2,), 9.0)
  assert float(jnp.abs(mag.magnify_clip(params, frames, a) - fixed[1](params, frames, a)).max()) > 1e-3
  # Per example: the largest alpha of the batch sets the count.
  np.testing.assert_array_equal(mag.magnify_clip(params, frames, jnp.array([2.0, 9.0])),
                                fixed[2](params, frames, jnp.array([2.0, 9.0])))
  with pytest.raises(ValueError, match=r"alpha=20.*alpha_max=4.*max_repeats"):
    mag.magnify_clip(params, frames, jnp.array([2.0, 20.0]))
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="alpha"):
      mag.magnify_clip(params, frames, jnp.full((2,), bad))


def test_traced_alpha_follows_alpha_on_device():
  """Inside a caller's jit the count is chosen on device (lax.switch), up to max_repeats."""
  mag, frames = _mag(), _frames()
  params = _perturbed(mag.params)
  fn = jax.jit(mag.magnify_clip)
  for alpha, k in ((3.0, 1), (9.0, 2)):
    a = jnp.full((2,), alpha)
    want = _mag(repeats=k).magnify_clip(params, frames, a)
    np.testing.assert_allclose(fn(params, frames, a), want, atol=1e-6, err_msg=f"alpha {alpha}")


def test_per_pixel_alpha_map():
  mag, frames = _mag(), _frames()
  params = _perturbed(mag.params)
  amap = jnp.ones((2, 3, 32, 32)).at[:, :, :, 16:].set(9.0)  # right half: two repeats
  out = mag.magnify_clip(params, frames, amap)
  assert out.shape == frames.shape
  np.testing.assert_array_equal(out, _mag(repeats=2).magnify_clip(params, frames, amap))
  np.testing.assert_array_equal(out[:, :, :, :16], frames[:, :, :, :16])  # alpha 1: unchanged
  np.testing.assert_array_equal(out[:, 0], frames[:, 0])
  assert float(jnp.abs(out[:, 1:, :, 16:] - frames[:, 1:, :, 16:]).max()) > 1e-3
  with pytest.raises(ValueError, match="alpha_max"):
    mag.magnify_clip(params, frames, amap.at[0, 1, 3, 20].set(100.0))
