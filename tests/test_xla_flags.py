"""The package turns XLA:CPU's YNNPACK convolution fusions off (bench/README.md: the 256 px U-Net
step 7.50 -> 3.39 s) before jax starts, and keeps a user's own setting of that option."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTION = "--xla_cpu_experimental_ynn_fusion_type"


def _flags_after_import(xla_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  code = ("import magplus_jax, os, jax, jax.numpy as jnp; jax.block_until_ready(jnp.ones(2) + 1); "
          "print(os.environ['XLA_FLAGS'])")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True)
  return out.stdout.strip().splitlines()[-1]


def test_option_added_to_empty_and_existing_flags():
  assert _flags_after_import(None) == f"{OPTION}="
  assert _flags_after_import("--xla_force_host_platform_device_count=2").split() == [
      "--xla_force_host_platform_device_count=2", f"{OPTION}="]


def test_users_own_setting_is_kept():
  mine = f"{OPTION}=dot"  # a valid value other than the package's (an invalid one aborts XLA)
  assert _flags_after_import(mine) == mine
