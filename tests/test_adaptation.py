"""Test-time adaptation lowers the self-supervised loss on the clip and leaves the original alone."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from magplus_jax import adaptation, losses
from magplus_jax.evaluation import heldout
from magplus_jax.models import magnifier, magnifiers
from magplus_jax.models.flow import get_flow

from conftest import tiny_config


def _setup():
  # The Eulerian-gate network starts at the identity, so adaptation must find the motion (the
  # default Lagrangian one starts close to its target already: a weak test of the optimiser).
  c = tiny_config(**{"model.output": "eulerian_gate"})
  pairs = heldout.heldout_pairs(c, 4.0, 3)
  # A 4-frame clip: the shared reference, then three moved frames (the held-out pairs share no
  # reference, so the clip is ref_0 followed by frames warped from it with their own motion).
  frames = np.concatenate([pairs["ref"][:1], pairs["frame"][:1], pairs["frame"][:1],
                           pairs["frame"][:1]])
  mag = magnifier.build(ml_collections.ConfigDict(dict(model=c.model.to_dict(), seed=0)))
  return c, jnp.asarray(frames), mag, get_flow(c.flow)


def _loss(mag, frames, flow, c, alpha=4.0):
  pred = mag(frames[None], jnp.array([alpha]))[0, 1:]
  ref = jnp.broadcast_to(frames[:1], pred.shape)
  return float(losses.magnification_loss(flow, ref, frames[1:], pred,
                                         jnp.full((pred.shape[0],), alpha), c.loss)[0])


def test_adaptation_lowers_the_loss_on_the_clip():
  c, frames, mag, flow = _setup()
  before = _loss(mag, frames, flow, c)
  adapted = adaptation.adapt(mag, frames, 4.0, flow, c.loss, steps=12, learning_rate=1e-3,
                             frames_per_step=2)
  after = _loss(adapted, frames, flow, c)
  assert after < 0.9 * before, (before, after)
  # The original magnifier (and so the checkpoint it came from) is untouched.
  assert _loss(mag, frames, flow, c) == pytest.approx(before, rel=1e-6)
  changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), adapted.params[0],
                         mag.params[0])
  assert max(jax.tree.leaves(changed)) > 0


def test_zero_steps_is_a_no_op_and_bad_inputs_raise():
  c, frames, mag, flow = _setup()
  assert adaptation.adapt(mag, frames, 4.0, flow, c.loss, steps=0) is mag
  with pytest.raises(ValueError, match="learned magnifier"):
    adaptation.adapt(magnifiers.IDENTITY, frames, 4.0, flow, c.loss, steps=2)
  with pytest.raises(ValueError, match="T>=2"):
    adaptation.adapt(mag, frames[:1], 4.0, flow, c.loss, steps=2)


def test_frame_batches_cover_the_clip_without_the_reference():
  b = adaptation._frame_batches(9, 3, 8)  # pylint: disable=protected-access
  assert b.shape == (8, 3) and b.min() >= 1 and b.max() <= 8
  assert set(b.ravel()) == set(range(1, 9))
