"""python -m magplus_jax.main --config configs/<name>.py[:arg] --workdir DIR [--config.x=y ...]

config.mode picks the job (config_lib.MODES): train (train.py), generate (generate.py), magnify
(magnify.py), and the scorings in evaluation/: evaluate (heldout.py: held-out procedural pairs),
protocol (protocol_mode.py: the synthetic magnification protocol) and evaluate_generation
(generation.py: the pipeline against the backbone alone).
Bad input (unknown config keys, wrong values, missing or corrupt files, a checkpoint of another
model, alpha <= 0) ends with one line naming the thing and the problem, and a non-zero exit status
(2 for the command line, 1 for the job); --debug shows the traceback instead.
"""
import ast
import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from magplus_jax import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and outputs.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for input errors.")

# Exceptions that mean "the input is wrong", reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, KeyError)


def _message(e: BaseException) -> str:
  """One readable line: unwraps ml_collections' quoted key errors and config_flags' tracebacks."""
  msg = str(e.args[0]) if isinstance(e, (KeyError, AttributeError)) and e.args else str(e)
  while len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
    try:
      msg = ast.literal_eval(msg)
    except (ValueError, SyntaxError):
      break
  if "Traceback (most recent call last)" in msg:
    head = msg.split("Traceback", 1)[0].strip().rstrip(":")
    tail = [l for l in msg.splitlines() if l.strip()][-1]
    msg = f"{head}: {tail}"
  if isinstance(e, AttributeError):  # config_flags: a key the locked config does not have
    key, _, hint = msg.partition("\n")
    msg = f"unknown config key {key.strip(chr(39))!r}." + (f" {hint.strip()}" if hint else "")
  return " ".join(line.strip() for line in msg.split("\n") if line.strip())


def _fail(prefix: str, e: BaseException, status: int):
  print(f"magplus_jax: {prefix}{_message(e)}", file=sys.stderr)
  sys.exit(status)


def _parse_flags(argv):
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is None:
      raise ValueError("--config is required, e.g. --config configs/default.py")
    _ = _CONFIG.value.mode  # the config file is loaded lazily: load it here
    return rest
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    _fail("bad command line: ", e, 2)


class _QuietLibraries(logging.logging.Filter):
  """Keeps orbax's and grain's per-save INFO chatter out of the run log (warnings still pass)."""

  def filter(self, record):
    noisy = ("/orbax/", "/grain/", "/jax/_src/", "/etils/")
    return record.levelno >= logging.logging.WARNING or not any(n in record.pathname for n in noisy)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if not _WORKDIR.value:
    _fail("bad command line: ", ValueError("--workdir is required"), 2)
  try:
    if config.mode not in config_lib.MODES:
      raise ValueError(f"config.mode={config.mode!r}: choose one of {sorted(config_lib.MODES)}")
    module, function = config_lib.MODES[config.mode]
    getattr(importlib.import_module(f"magplus_jax.{module}"), function)(config, _WORKDIR.value)
  except USER_ERRORS as e:
    if _DEBUG.value:
      raise
    _fail("error: ", e, 1)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
