"""RAFT (full and small) against the official PyTorch numbers in tests/golden/raft_{full,small}.npz.

Tolerances are the README's (measured as float64-vs-float32 and channels_last-vs-stored spreads of
the reference itself). One jitted call per (model, size) computes everything compared there: the
20-iteration run with every iteration's prediction (iterations 1..5 of it are the 5-iteration run,
the refinement being the same computation) plus the intermediates. The plain last-iteration path
(`RAFT.__call__` without all_predictions) is compared through the FlowEstimator built from a
converted checkpoint (test_estimator_matches_reference). Tests writing .pth files need torch.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from golden_utils import load_fixture
from magplus_jax.checkpointing import load_pretrained
from magplus_jax.models import resample
from magplus_jax.models.flow import get_flow, raft
from magplus_jax.ports import raft as raft_port
from magplus_jax.ports.common import CheckpointMismatchError

jax.config.update("jax_default_matmul_precision", "highest")

MODELS = {"full": ("raft_full", False), "small": ("raft_small", True)}
SIZES = ("s128x128", "s136x184")
ITERS = 20
# README "Tolerance guide (float32 port)"; delta_flow (a 1/8-res flow) and up_mask (a feature map)
# take the flow_low / feature-map tolerance.
ATOL = {"flow_low": 1e-4, "flow_up": 1e-3, "flow_predictions": 1e-3, "fmap1": 1e-4, "fmap2": 1e-4,
        "cnet": 1e-4, "net0": 1e-4, "inp0": 1e-4, "corr_iter0": 1e-3, "update_iter0/net": 5e-4,
        "update_iter0/delta_flow": 1e-4, "update_iter0/up_mask": 1e-4}


def _nhwc_images(z, size):
  """The fixture's 0..255 NCHW frames as [B, H, W, 3] in [0, 1] (x / 255 as the official code)."""
  f = lambda k: jnp.asarray(z[f"{size}/{k}"]).transpose(0, 2, 3, 1) / 255.0
  return f("image1"), f("image2")


def _nchw(x):
  return np.moveaxis(np.asarray(x), -1, -3)


@pytest.fixture(scope="module")
def models():
  """variant -> (fixture arrays, state dict, graphdef, state, jitted run over a size)."""
  out = {}
  for variant, (name, small) in MODELS.items():
    z, _, sd = load_fixture(name)
    graphdef, state = nnx.split(raft.model_from_params(raft_port.convert_state_dict(sd, small),
                                                       small))
    d = raft.dims(small)

    @jax.jit
    def run(state, image1, image2, graphdef=graphdef, d=d, small=small):
      model = nnx.merge(graphdef, state)
      flow_low, flow_up = model(image1, image2, iters=ITERS, all_predictions=True)
      enc = model.encode(image1, image2)
      coords0 = resample.pixel_grid(*enc.fmap1.shape[1:3])[None]
      corr = raft.correlation_lookup(raft.correlation_pyramid(enc.fmap1, enc.fmap2, d.levels),
                                     coords0, d.radius)
      net, delta = model.update_block(enc.net, enc.inp, corr, jnp.zeros_like(coords0))
      extra = {"fmap1": enc.fmap1, "fmap2": enc.fmap2, "net0": enc.net, "inp0": enc.inp,
               "cnet": model.cnet(raft.normalize_image(image1)), "corr_iter0": corr,
               "update_iter0/net": net, "update_iter0/delta_flow": delta}
      if not small:
        extra["update_iter0/up_mask"] = model.update_block.upsample_mask(net)
      return flow_low, flow_up, extra

    out[variant] = (z, sd, graphdef, state, run)
  return out


@pytest.fixture(scope="module")
def results(models):
  """(variant, size) -> {golden key: our value in the fixture's layout}, computed once each."""
  cache = {}

  def get(variant, size):
    if (variant, size) not in cache:
      z, _, _, state, run = models[variant]
      flow_low, flow_up, extra = jax.device_get(run(state, *_nhwc_images(z, size)))
      got = {"iters5/flow_low": _nchw(flow_low[4]), "iters5/flow_up": _nchw(flow_up[4]),
             f"iters{ITERS}/flow_low": _nchw(flow_low[-1]),
             f"iters{ITERS}/flow_up": _nchw(flow_up[-1]),
             "train_iters5/flow_predictions": _nchw(flow_up[:5])}
      got.update({f"extra/{k}": _nchw(v) for k, v in extra.items()})
      cache[variant, size] = got
    return cache[variant, size]
  return get


def _check(got, want, key):
  atol = ATOL[key.split("/", 1)[1] if key.startswith("extra/") else key.rsplit("/", 1)[1]]
  assert got.shape == want.shape, (key, got.shape, want.shape)
  err = float(np.max(np.abs(got - want)))
  assert np.all(np.isfinite(got)), key
  assert err <= atol, f"{key}: max abs error {err:.3g} > {atol:g}"
  return err


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", sorted(MODELS))
def test_flow_matches_reference(models, results, variant, size):
  z = models[variant][0]
  got = results(variant, size)
  for key in ("iters5/flow_low", "iters5/flow_up", "iters20/flow_low", "iters20/flow_up",
              "train_iters5/flow_predictions"):
    _check(got[key], z[f"{size}/{key}"], key)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", sorted(MODELS))
def test_intermediates_match_reference(models, results, variant, size):
  z = models[variant][0]
  got = results(variant, size)
  keys = [k for k in got if k.startswith("extra/")]
  assert sorted(keys) == sorted(k[len(size) + 1:] for k in z if k.startswith(f"{size}/extra/"))
  for key in keys:
    _check(got[key], z[f"{size}/{key}"], key)


def _save_pth(sd, path, prefix="module."):
  torch = pytest.importorskip("torch")
  torch.save({prefix + k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)


def _same_tree(a, b):
  fa, fb = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.fixture(scope="module")
def converted_full(models, tmp_path_factory):
  """A raft-things.pth-style file (DataParallel 'module.' names) run through the converter CLI."""
  tmp = tmp_path_factory.mktemp("raft")
  pth = str(tmp / "raft-things.pth")
  _save_pth(models["full"][1], pth)
  out = str(tmp / "raft_things")
  assert raft_port.main([pth, out]) == 0  # size detected from the keys
  return out


def test_converter_round_trip(models, converted_full):
  params, meta = load_pretrained(converted_full, model="raft")
  assert meta["config"]["small"] is False
  _same_tree(params, raft_port.convert_state_dict(models["full"][1], small=False))


def test_estimator_matches_reference(models, converted_full):
  """The FlowEstimator from config (plain last-iteration path, padding a no-op at 136x184)."""
  z = models["full"][0]
  flow = get_flow(ml_collections.ConfigDict({"name": "raft", "checkpoint": converted_full,
                                             "iters": 5}))
  size = "s136x184"
  got = _nchw(flow(*_nhwc_images(z, size)))
  _check(got, z[f"{size}/iters5/flow_up"], "iters5/flow_up")

  # 130x179 pads to 136x184 (rows 3+3, columns 2+3): same compiled network, cropped back.
  im1, im2 = _nhwc_images(z, size)
  small_flow = flow(im1[:, 3:133, 2:181], im2[:, 3:133, 2:181])
  assert small_flow.shape == (1, 130, 179, 2) and bool(jnp.all(jnp.isfinite(small_flow)))
  with pytest.raises(ValueError, match="at least 128x128"):
    flow(im1[:, :120], im2[:, :120])


def test_converter_small_round_trip(models, tmp_path):
  _, sd, _, _, _ = models["small"]
  pth = str(tmp_path / "raft-small.pth")
  _save_pth(sd, pth)
  out = str(tmp_path / "raft_small")
  assert raft_port.main([pth, out, "--small"]) == 0
  params, meta = load_pretrained(out, model="raft_small")
  assert meta["config"]["small"] is True
  _same_tree(params, raft_port.convert_state_dict(sd, small=True))
  with pytest.raises(CheckpointMismatchError, match="raft_small"):
    raft.load(out, small=False)  # a small checkpoint is not the full model


def test_converter_rejects_wrong_files(models):
  full_sd, small_sd = models["full"][1], models["small"][1]
  with pytest.raises(CheckpointMismatchError) as e:
    raft_port.convert_state_dict(small_sd, small=False)
  msg = str(e.value)
  assert "missing keys (86): cnet.layer1.0.norm1.bias" in msg  # full cnet has batch norm
  assert "unexpected keys (30): cnet.layer1.0.conv3.bias" in msg  # small blocks are bottlenecks
  assert "cnet.conv1.weight: checkpoint (32, 3, 7, 7), model (64, 3, 7, 7)" in msg
  assert "look like RAFT-small (convert with --small)" in msg

  truncated = {k: v for k, v in full_sd.items() if not k.startswith("update_block.mask.")}
  with pytest.raises(CheckpointMismatchError, match=r"missing keys \(4\).*update_block\.mask\.0"):
    raft_port.convert_state_dict(truncated, small=False)


def test_build_errors(tmp_path):
  with pytest.raises(ValueError, match="needs converted RAFT weights.*ports.raft"):
    get_flow(ml_collections.ConfigDict({"name": "raft", "checkpoint": "", "iters": 12}))
  with pytest.raises(FileNotFoundError):
    get_flow(ml_collections.ConfigDict({"name": "raft_small", "checkpoint": str(tmp_path / "no"),
                                        "iters": 12}))


def test_pad_to_multiple_of_8():
  x = jax.random.uniform(jax.random.key(0), (1, 130, 141, 3))
  padded, pads = raft.pad_to_multiple_of_8(x)
  assert padded.shape == (1, 136, 144, 3) and pads == (3, 3, 1, 2)
  np.testing.assert_array_equal(padded[:, 3:133, 1:142], x)
  np.testing.assert_array_equal(padded[:, :3, 1:142], jnp.repeat(x[:, :1], 3, axis=1))  # edge rows
  np.testing.assert_array_equal(padded[:, 3:133, 142:], jnp.repeat(x[:, :, -1:], 2, axis=2))
  same, pads = raft.pad_to_multiple_of_8(x[:, :128, :136])
  assert same.shape == (1, 128, 136, 3) and pads == (0, 0, 0, 0)


def _gradient_case(models):
  z, _, graphdef, state, _ = models["full"]
  im1, im2 = _nhwc_images(z, "s128x128")
  yy, xx = jnp.meshgrid(jnp.linspace(0, 1, 128), jnp.linspace(0, 1, 128), indexing="ij")
  direction = jnp.stack([jnp.cos(3 * xx + 1), jnp.sin(2 * yy), jnp.cos(2 * xx - 3 * yy)], -1)[None]
  weight = jnp.stack([jnp.sin(4 * xx + yy), jnp.cos(3 * yy)], -1)[None]

  # Weights and image1 are arguments, not closure constants: XLA would constant-fold the encoders.
  def objective(image2, state, image1, iters):
    _, flow = nnx.merge(graphdef, state)(image1, image2, iters=iters)
    return jnp.mean(flow * weight)

  value_and_grad = jax.jit(jax.value_and_grad(objective), static_argnums=3)
  return value_and_grad, (state, im1), im2, direction


def test_gradient_matches_finite_difference(models):
  """d(flow)/d(image2) agrees with a central difference along a smooth direction for one iteration,
  where RAFT's coords1.detach() cuts nothing (with more iterations the official gradient is by
  design not the derivative of the flow). Measured: eps 1e-3 -> 1.0% relative error (eps 1e-2 is
  outside the linear range of these random weights: 24%; eps 1e-4 is float32 noise: 6%)."""
  value_and_grad, args, im2, direction = _gradient_case(models)
  _, grad = value_and_grad(im2, *args, 1)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
  eps = 1e-3
  fd = (float(value_and_grad(im2 + eps * direction, *args, 1)[0])
        - float(value_and_grad(im2 - eps * direction, *args, 1)[0])) / (2 * eps)
  analytic = float(jnp.sum(grad * direction))
  assert abs(fd - analytic) <= 0.05 * abs(analytic), (fd, analytic)


@pytest.mark.slow
def test_gradient_through_iterations_is_finite(models):
  value_and_grad, args, im2, _ = _gradient_case(models)
  value, grad = value_and_grad(im2, *args, 3)
  assert np.isfinite(float(value))
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
