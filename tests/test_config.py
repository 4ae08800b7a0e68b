"""Configs: loading, typed overrides, locked keys, validation, and the CLI's one-line errors."""
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from magplus_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args):
  # config_flags defines the --config.x override flags from sys.argv at definition time.
  argv = ["prog", *args]
  saved, sys.argv = sys.argv, argv
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True)
    fv(argv)
  finally:
    sys.argv = saved
  return fv.config


@pytest.mark.parametrize("name", ["default.py", "default.py:demag", "default.py:shared",
                                  "generate.py"])
def test_configs_load_and_validate(name):
  config = _parse(f"--config={os.path.join(ROOT, 'configs', name)}")
  config_lib.validate(config)


def test_override_nested_field():
  config = _parse(f"--config={ROOT}/configs/default.py", "--config.optimizer.learning_rate=1e-3",
                  "--config.total_steps=7", "--config.model.norm=batch")
  assert config.optimizer.learning_rate == 1e-3
  assert config.total_steps == 7
  assert config.model.norm == "batch"


def test_alpha_ranges():
  for task, (lo, hi) in {"magplus": (1, 256), "demag": (1 / 256, 1), "shared": (1 / 256, 256)}.items():
    c = config_lib.base_config()
    c.task = task
    assert config_lib.alpha_range(c) == (lo, hi)


@pytest.mark.parametrize("field,value,needle", [
    ("data.alpha_max", -1.0, "alpha_max"), ("task", "nope", "config.task"),
    ("nan_policy", "ignore", "nan_policy"), ("total_steps", 0, "total_steps"),
    ("data.image_size", 30, "divisible")])
def test_validate_rejects(field, value, needle):
  c = config_lib.base_config()
  node, key = (c[field.split(".")[0]], field.split(".")[1]) if "." in field else (c, field)
  node[key] = value
  with pytest.raises(ValueError, match=needle):
    config_lib.validate(c)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "magplus_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_cli_unknown_key_is_one_clear_line(tmp_path):
  r = _cli("--config", "configs/default.py", "--workdir", str(tmp_path),
           "--config.total_step=3")
  assert r.returncode == 2
  assert "unknown config key 'total_step'" in r.stderr and "total_steps" in r.stderr
  assert "Traceback" not in r.stderr
  assert list(tmp_path.iterdir()) == []


def test_cli_bad_value_and_missing_config(tmp_path):
  r = _cli("--config", "configs/default.py", "--workdir", str(tmp_path),
           "--config.total_steps=abc")
  assert r.returncode == 2 and "total_steps" in r.stderr and "Traceback" not in r.stderr
  r = _cli("--config", "configs/nope.py", "--workdir", str(tmp_path))
  assert r.returncode == 2 and "nope.py" in r.stderr


def test_cli_invalid_alpha_max_fails_before_work(tmp_path):
  r = _cli("--config", "configs/default.py", "--workdir", str(tmp_path),
           "--config.data.alpha_max=-2")
  assert r.returncode == 1
  assert "alpha_max" in r.stderr and "Traceback" not in r.stderr
