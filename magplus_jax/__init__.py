"""MagPlus in JAX/Flax.

TensorFlow comes in through clu and tensorflow-datasets (metric writing, data sets; it computes
nothing of the models). At import it writes C++ lines on stderr: "All log messages before
absl::InitializeLog() ...", and, where it turns its oneDNN paths on (by itself on AVX-512/AMX CPUs),
"oneDNN custom operations are on ...". That notice goes through absl's own logger, which
TF_CPP_MIN_LOG_LEVEL does not reach (measured with TensorFlow 2.21: level 3 still prints it), so
the oneDNN paths are turned off, which also keeps TensorFlow's kernels the same on every CPU. Every
entry point (`python -m magplus_jax.main`, the converters under magplus_jax.ports) imports this
package first, before anything can import TensorFlow, so this holds whatever the calling shell set:
a user's bad input ends with exactly one line on every CPU. MAGPLUS_TF_LOGS=1 keeps the shell's
settings, for debugging TensorFlow itself.
"""
import os as _os

if _os.environ.get("MAGPLUS_TF_LOGS") != "1":
  _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  _os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
