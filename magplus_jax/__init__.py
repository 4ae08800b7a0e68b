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

# XLA:CPU sends convolutions to YNNPACK library fusions by default; their kernel (weight) gradients
# run at ~14 GFLOP/s against ~53 on XLA's own Eigen path (4x256x256, 64->32 3x3 conv on 2 AVX2
# cores: 706 vs 182 ms), which made the 256 px U-Net train step 7.50 s instead of 3.39 s
# (bench/README.md). An empty fusion-type list turns them off. It must be in XLA_FLAGS before jax
# starts its backend, hence here; a user's own setting of the option is kept. GPU/TPU ignore it.
_YNN = "--xla_cpu_experimental_ynn_fusion_type"
if _YNN not in _os.environ.get("XLA_FLAGS", ""):
  _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + f" {_YNN}=").strip()
