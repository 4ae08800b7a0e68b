"""The weights shipped in magplus_jax/pretrained: they load, keep their promises, and export."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from magplus_jax import checkpointing, config_lib, pretrained
from magplus_jax.models import magnifier
from data_pipelines import procedural
from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clip():
  """Two held-out procedural frames at 64 px: [1, 2, 64, 64, 3]."""
  spec = procedural.ProceduralSpec(image_size=64, alpha_max=8.0, max_motion_px=(0.3, 0.3))
  ex = procedural.generate_example(spec, "test", 0, 0)
  return jnp.asarray(np.stack([ex["ref"], ex["frame"]])[None])


@pytest.mark.parametrize("task", pretrained.TASKS)
def test_shipped_network_loads_and_is_the_identity_at_alpha_one(task, clip):
  mag = magnifier.build(pretrained.magnifier_config(task))
  assert mag.name == task
  np.testing.assert_array_equal(mag(clip, jnp.ones((1,))), clip)
  # ... and it does move pixels at another alpha.
  alpha = 8.0 if task == "magplus" else 0.25
  assert float(jnp.abs(mag(clip, jnp.full((1,), alpha)) - clip).max()) > 1e-2


@pytest.mark.parametrize("task", pretrained.TASKS)
def test_shipped_network_static_in_static_out(task, clip):
  still = jnp.concatenate([clip[:, :1]] * 3, axis=1)
  alpha = 100.0 if task == "magplus" else 0.01
  np.testing.assert_array_equal(magnifier.build(pretrained.magnifier_config(task))(
      still, jnp.full((1,), alpha)), still)


def test_shipped_architecture_is_the_base_config_and_small():
  """Every mode's default config.model is the shipped network, so no checkpoint is needed."""
  for task in pretrained.TASKS:
    pretrained.check_model(config_lib.base_config().model, task)
    assert pretrained.alpha_max(task) == config_lib.base_config().data.alpha_max
  def size(*dirs):
    return sum(os.path.getsize(os.path.join(d, f)) for top in dirs for d, _, fs in os.walk(top)
               for f in fs)
  # the budgets of the issues that shipped them: the magnifiers <= 25 MB in all (#18), the
  # backbone trained here <= 25 MB (#20)
  assert size(*map(pretrained.path, pretrained.TASKS)) < 25e6
  for name in pretrained.BACKBONES:
    assert size(pretrained.backbone_path(name)) < 25e6, name
  for task in pretrained.TASKS:
    assert os.path.isfile(os.path.join(pretrained.path(task), "calibration.json"))


@pytest.mark.parametrize("task", pretrained.TASKS)
def test_shipped_config_is_the_recipe(task):
  """configs/pretrained.py is the recipe of what is shipped: a change to one needs the other."""
  recipe = sweep.load_module(os.path.join(ROOT, "configs", "pretrained.py"))
  as_json = lambda d: json.loads(json.dumps(d))   # tuples as the shipped JSON holds them: lists
  want = as_json(recipe.get_config(task).to_dict())
  shipped = pretrained.training_config(task)
  for key in ("task", "total_steps", "batch_size", "seed"):
    assert shipped[key] == want[key], (task, key)
  base = as_json(config_lib.base_config().to_dict())
  for group in ("loss", "model", "optimizer"):  # a key added since the run has its default
    assert {**base[group], **shipped[group]} == want[group], (task, group)
  for key in ("image_size", "alpha_max", "max_motion_px", "noise_std", "noise_sampling"):
    assert shipped["data"][key] == want["data"][key], (task, key)


def test_wrong_architecture_is_refused_naming_it():
  cfg = pretrained.magnifier_config("magplus")
  cfg.model.width = 8
  with pytest.raises(checkpointing.CheckpointMismatchError, match="another architecture"):
    magnifier.build(cfg)
  model = config_lib.base_config().model
  model.levels = 3
  with pytest.raises(ValueError, match=r"model.levels=3 \(shipped: 4\)"):
    pretrained.check_model(model)


def test_export_round_trip(tmp_path):
  out = str(tmp_path / "exported")
  step = checkpointing.export_magnifier(pretrained.path("demag"), out)
  assert os.path.isfile(os.path.join(out, "config.json"))
  cfg = ml_collections.ConfigDict({**pretrained.magnifier_config("demag").to_dict(),
                                   "checkpoint": out})
  a = magnifier.build(cfg).params
  b = magnifier.build(pretrained.magnifier_config("demag")).params
  assert len(jax.tree.leaves(a)) == len(jax.tree.leaves(b)) > 10
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(FileExistsError):
    checkpointing.export_magnifier(pretrained.path("demag"), out)
  assert checkpointing.export_magnifier(pretrained.path("demag"), out, overwrite=True) == step
  assert not os.path.exists(out + ".tmp") and not os.path.exists(out + ".old")
