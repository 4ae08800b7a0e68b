"""MetaPortrait checkpoints -> magplus_jax: the base model and the temporal SR net.

  python -m magplus_jax.ports.metaportrait ckpt_base.pth.tar OUT_DIR          # base 256
  python -m magplus_jax.ports.metaportrait temporal_gfpgan.pth OUT_DIR_SR     # SR 256 -> 512

The kind is recognised from the file (`--kind base|sr` forces it):
  * base: `base_model/checkpoint/ckpt_base.pth.tar`, a dict whose "generator" entry is the
    OcclusionAwareSPADEGenerator state dict (the official loader uses strict=True; "discriminator",
    optimiser states and "epoch" may sit beside it and are ignored);
  * sr: a BasicSR network file such as `temporal_gfpgan.pth`, the state dict under "params" (or
    "params_ema"), with DataParallel's "module." prefix stripped if present.

Spectral norm (25 base layers) is folded once, here, exactly as torch evaluates it in eval(): no
power iteration, sigma = u . (W_mat v) from the stored buffers, W = weight_orig / sigma, with W_mat
= weight_orig.reshape(out, -1), or for the transposed conv `SPDAE_G.conv1` (dim 1)
weight_orig.transpose(0, 1).reshape(512, -1). A generator saved after `remove_spectral_norm`
(plain `.weight`) is accepted too. EqualLR (`adain.style.linear`) is folded as torch does it at run
time: weight_orig * float32(sqrt(2 / fan_in)).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Iterator

import numpy as np

from magplus_jax.ports.common import (CheckpointMismatchError, check_state_dict, conv_kernel,
                                      linear_kernel, load_torch_file, strip_prefix)

BASE_MODEL = "metaportrait_base"
SR_MODEL = "metaportrait_sr"

# ------------------------------------------------------------------------------- layer tables
# (torch prefix, flax path, kind). Kinds say which torch tensors a layer has and how they map.


def _hourglass_entries(tprefix, fpath, num_down, num_up, norm, same) -> Iterator[tuple]:
  for kind, tname, count in (("down", "encoder.down_blocks", num_down),
                             ("up", "decoder.up_blocks", num_up)):
    for i in range(count):
      tp, fp = f"{tprefix}.{tname}.{i}", fpath + (f"{kind}{i}",)
      blocks = [("", ())] + ([(".SameBlock2d", ("same",))] if same else [])
      for tsub, fsub in blocks:
        yield f"{tp}{tsub}.conv", fp + fsub + ("conv",), "conv"
        if norm == "adain":
          for t_lin, f_lin in (("mlp_shared.0", "mlp_shared"), ("mlp_gamma", "mlp_gamma"),
                               ("mlp_beta", "mlp_beta")):
            yield f"{tp}{tsub}.norm.{t_lin}", fp + fsub + ("norm", f_lin), "linear"
        else:
          yield f"{tp}{tsub}.norm", fp + fsub + ("norm",), "affine"


def base_entries() -> list[tuple]:
  e = [(f"ladder_network.layer{i}.0", ("ladder_network", f"layer{i}"), "sn_conv")
       for i in range(1, 7)]
  e.append(("ladder_network.fc", ("ladder_network", "fc"), "linear"))
  dm = ("dense_motion_network",)
  e += _hourglass_entries("dense_motion_network.hourglass", dm + ("hourglass",), 5, 3, "adain", True)
  e += [("dense_motion_network.reger.0", dm + ("reger_norm",), "layernorm"),
        ("dense_motion_network.reger.2", dm + ("reger",), "conv"),
        ("dense_motion_network.occlusion_net.0", dm + ("occlusion_norm",), "layernorm"),
        ("dense_motion_network.occlusion_net.2", dm + ("occlusion",), "conv")]
  e += _hourglass_entries("feature_encoder", ("feature_encoder",), 3, 3, "affine", False)
  e.append(("fuse_high_res", ("fuse_high_res",), "conv"))
  e.append(("SPDAE_G.conv1", ("SPDAE_G",), "sn_conv_transpose"))
  for block in ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"):
    tp, fp = f"SPDAE_G.{block}", ("SPDAE_G", block)
    learned = block.startswith("up")
    e += [(f"{tp}.conv_0", fp + ("conv_0",), "sn_conv"), (f"{tp}.conv_1", fp + ("conv_1",), "sn_conv")]
    if learned:
      e.append((f"{tp}.conv_s", fp + ("conv_s",), "sn_conv"))
    for norm in ("norm_0", "norm_1") + (("norm_s",) if learned else ()):
      np_, nf = f"{tp}.{norm}", fp + (norm,)
      e += [(f"{np_}.mlp_shared.0", nf + ("mlp_shared",), "conv"),
            (f"{np_}.mlp_gamma", nf + ("mlp_gamma",), "conv"),
            (f"{np_}.mlp_beta", nf + ("mlp_beta",), "conv"),
            (f"{np_}.mlp_attention.0", nf + ("mlp_attention",), "conv"),
            (f"{np_}.adain.style.linear", nf + ("adain",), "equal_linear")]
  e.append(("SPDAE_G.conv_img", ("SPDAE_G", "conv_img"), "conv"))
  return e


def sr_entries() -> tuple[list[tuple], dict]:
  """(entries, ignored torch keys -> shapes): the parts that do not run at inference."""
  from magplus_jax.models.backbones import metaportrait_sr as sr  # pylint: disable=g-import-not-at-top
  e = [("conv_body_first", ("conv_body_first",), "conv")]
  for i in range(sr.LOG_SIZE - 2):
    for tname, fname, tw, fw in (("conv_body_down", f"down{i}", "window_down", f"window_down{i}"),
                                 ("conv_body_up", f"up{i}", "recurrent_forward", f"window_up{i}")):
      e += [(f"{tname}.{i}.conv1", (fname, "conv1"), "conv"),
            (f"{tname}.{i}.conv2", (fname, "conv2"), "conv"),
            (f"{tname}.{i}.skip", (fname, "skip"), "conv"),
            (f"{tw}.{i}.conv1", (fw, "conv1"), "conv"),
            (f"{tw}.{i}.conv2", (fw, "conv2"), "conv")]
    for which in ("scale", "shift"):
      e += [(f"condition_{which}.{i}.0", (f"condition_{which}{i}", "conv1"), "conv"),
            (f"condition_{which}.{i}.2", (f"condition_{which}{i}", "conv2"), "conv")]
  e += [("final_conv", ("final_conv",), "conv"), ("final_linear", ("final_linear",), "linear")]
  d, fd = "stylegan_decoder", ("stylegan_decoder",)
  e.append((f"{d}.constant_input", fd, "constant_input"))
  convs = [("style_conv1", "style_conv1")]
  rgbs = [("to_rgb1", "to_rgb1")]
  for level in range(sr.LOG_SIZE - 2):
    convs += [(f"style_convs.{2 * level}", f"conv_up{level}"),
              (f"style_convs.{2 * level + 1}", f"conv{level}")]
    rgbs.append((f"to_rgbs.{level}", f"rgb{level}"))
  for tname, fname in convs + rgbs:
    e += [(f"{d}.{tname}.modulated_conv", fd + (fname, "modulated_conv"), "modulated_conv"),
          (f"{d}.{tname}", fd + (fname,), "channel_bias")]
  ignored = {}
  for k in range(8):
    ignored[f"{d}.style_mlp.{2 * k + 1}.weight"] = (sr.STYLE_DIM, sr.STYLE_DIM)
    ignored[f"{d}.style_mlp.{2 * k + 1}.bias"] = (sr.STYLE_DIM,)
  for k in range(2 * (sr.LOG_SIZE - 2) + 1):
    r = 2 ** ((k + 5) // 2)
    ignored[f"{d}.noises.noise{k}"] = (1, 1, r, r)
  for tname, _ in convs:
    ignored[f"{d}.{tname}.weight"] = (1,)            # noise strength; the noise is zero
  for i, log in enumerate(range(3, sr.LOG_SIZE + 1)):
    ignored[f"toRGB.{i}.weight"] = (3, sr.unet_channels(2 ** log), 1, 1)
    ignored[f"toRGB.{i}.bias"] = (3,)
  return e, ignored


# ------------------------------------------------------------------------------- conversion
def _get(tree: dict, path: tuple):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = np.ascontiguousarray(value, dtype=np.float32)


def _torch_shapes(kind: str, prefix: str, f, spectral: bool) -> dict:
  """Expected torch tensors of one layer from its abstract Flax parameters `f`."""
  if kind in ("conv", "sn_conv"):
    kh, kw, cin, cout = f["kernel"].shape
    w = (cout, cin, kh, kw)
    out = {}
    if kind == "sn_conv" and spectral:
      out.update({f"{prefix}.weight_orig": w, f"{prefix}.weight_u": (cout,),
                  f"{prefix}.weight_v": (cin * kh * kw,)})
    else:
      out[f"{prefix}.weight"] = w
    if "bias" in f:
      out[f"{prefix}.bias"] = (cout,)
    return out
  if kind in ("linear", "equal_linear"):
    cin, cout = f["kernel"].shape
    name = "weight_orig" if kind == "equal_linear" else "weight"
    return {f"{prefix}.{name}": (cout, cin), f"{prefix}.bias": (cout,)}
  if kind == "layernorm":
    c = f["scale"].shape[0]
    return {f"{prefix}.weight": (c, 1, 1), f"{prefix}.bias": (c, 1, 1)}
  if kind == "affine":
    c = f["scale"].shape[0]
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}
  if kind == "sn_conv_transpose":
    cin, kh, kw, cout = f["conv1_kernel"].shape
    w = (cin, cout, kh, kw)
    base = ({f"{prefix}.weight_orig": w, f"{prefix}.weight_u": (cout,),
             f"{prefix}.weight_v": (cin * kh * kw,)} if spectral else {f"{prefix}.weight": w})
    return {**base, f"{prefix}.bias": (cout,)}
  if kind == "modulated_conv":
    kh, kw, cin, cout = f["kernel"].shape
    return {f"{prefix}.weight": (1, cout, cin, kh, kw),
            f"{prefix}.modulation.weight": (cin, 512), f"{prefix}.modulation.bias": (cin,)}
  if kind == "channel_bias":
    return {f"{prefix}.bias": (1, f["bias"].shape[0], 1, 1)}
  if kind == "constant_input":
    h, w, c = f["constant_input"].shape
    return {f"{prefix}.weight": (1, c, h, w)}
  raise ValueError(kind)


def fold_spectral_norm(w: np.ndarray, u: np.ndarray, v: np.ndarray, dim: int = 0) -> np.ndarray:
  """weight_orig / (u . W_mat v), torch's eval-mode spectral norm (no power iteration)."""
  w64 = np.asarray(w, np.float64)
  mat = np.swapaxes(w64, 0, 1) if dim == 1 else w64
  mat = mat.reshape(mat.shape[0], -1)
  sigma = float(np.dot(np.asarray(u, np.float64), mat @ np.asarray(v, np.float64)))
  if not np.isfinite(sigma) or sigma == 0.0:
    raise CheckpointMismatchError(f"spectral norm: sigma = {sigma} (corrupt weight_u/weight_v?)")
  return (w64 / sigma).astype(np.float32)


def _convert_layer(kind: str, prefix: str, sd: dict, spectral: bool) -> dict:
  g = lambda name: np.asarray(sd[f"{prefix}.{name}"], np.float32)
  has_bias = f"{prefix}.bias" in sd
  if kind in ("conv", "sn_conv"):
    if kind == "sn_conv" and spectral:
      w = fold_spectral_norm(g("weight_orig"), g("weight_u"), g("weight_v"))
    else:
      w = g("weight")
    out = {"kernel": conv_kernel(w)}
    if has_bias:
      out["bias"] = g("bias")
    return out
  if kind == "linear":
    return {"kernel": linear_kernel(g("weight")), "bias": g("bias")}
  if kind == "equal_linear":
    w = g("weight_orig")
    return {"kernel": linear_kernel(w * np.float32(math.sqrt(2.0 / w.shape[1]))), "bias": g("bias")}
  if kind == "layernorm":
    return {"scale": g("weight").reshape(-1), "bias": g("bias").reshape(-1)}
  if kind == "affine":
    return {"scale": g("weight"), "bias": g("bias")}
  if kind == "sn_conv_transpose":
    w = fold_spectral_norm(g("weight_orig"), g("weight_u"), g("weight_v"), dim=1) if spectral \
        else g("weight")
    return {"conv1_kernel": np.transpose(w, (0, 2, 3, 1)), "conv1_bias": g("bias")}
  if kind == "modulated_conv":
    return {"kernel": np.transpose(g("weight")[0], (2, 3, 1, 0)),
            "modulation": {"kernel": linear_kernel(g("modulation.weight")),
                           "bias": g("modulation.bias")}}
  if kind == "channel_bias":
    return {"bias": g("bias").reshape(-1)}
  if kind == "constant_input":
    return {"constant_input": np.transpose(g("weight")[0], (1, 2, 0))}
  raise ValueError(kind)


@functools.lru_cache(maxsize=None)
def _abstract_params(which: str) -> dict:
  """Parameter shapes of the Flax model (ShapeDtypeStructs, nothing allocated); read-only."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if which == "base":
    from magplus_jax.models.backbones.metaportrait import MetaPortraitGenerator as cls
  else:
    from magplus_jax.models.backbones.metaportrait_sr import TemporalGFPGAN as cls
  _, state = nnx.split(nnx.eval_shape(lambda: cls(nnx.Rngs(0))))
  return nnx.to_pure_dict(state)


def _convert(sd: dict, entries, ignored: dict, abstract: dict, what: str, spectral: bool) -> dict:
  expected = dict(ignored)
  for prefix, fpath, kind in entries:
    expected.update(_torch_shapes(kind, prefix, _get(abstract, fpath), spectral))
  check_state_dict(sd, expected, what)
  params: dict = {}
  written = set()
  for prefix, fpath, kind in entries:
    for name, value in _flatten(_convert_layer(kind, prefix, sd, spectral)):
      if fpath + name in written:  # two torch layers mapped onto one Flax parameter
        raise AssertionError(f"{what}: {'/'.join(fpath + name)} written twice")
      written.add(fpath + name)
      _set(params, fpath + name, value)
  # Every parameter of the model must have been filled, with its exact shape.
  for name, leaf in _flatten(abstract):
    got = _get(params, name)
    if tuple(got.shape) != tuple(leaf.shape):
      raise CheckpointMismatchError(f"{what}: {'/'.join(name)} converted to {got.shape}, model "
                                    f"needs {tuple(leaf.shape)}")
  return params


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def convert_state_dict(sd: dict) -> dict:
  """Base generator state dict (torch names, numpy values) -> Flax params (pure dict)."""
  sd = strip_prefix(dict(sd), "module.")
  spectral = any(k.endswith(".weight_orig") and not k.endswith("style.linear.weight_orig")
                 for k in sd)
  return _convert(sd, base_entries(), {}, _abstract_params("base"),
                  "MetaPortrait base generator", spectral)


def convert_sr_state_dict(sd: dict) -> dict:
  """GFPGANv1Clean_UnetWindow state dict (torch names, numpy values) -> Flax params."""
  sd = strip_prefix(dict(sd), "module.")
  entries, ignored = sr_entries()
  return _convert(sd, entries, ignored, _abstract_params("sr"),
                  "MetaPortrait temporal SR (GFPGANv1Clean_UnetWindow)", False)


def detect_kind(obj) -> str:
  if isinstance(obj, dict) and "generator" in obj:
    return "base"
  if isinstance(obj, dict) and ("params" in obj or "params_ema" in obj):
    return "sr"
  keys = list(obj) if isinstance(obj, dict) else []
  raise CheckpointMismatchError(
      "not a MetaPortrait checkpoint: expected a dict with 'generator' (ckpt_base.pth.tar) or "
      f"'params' (temporal_gfpgan.pth); top-level keys: {keys[:10]}")


def convert_file(path: str, out_dir: str, kind: str = "auto") -> str:
  """Converts one official file and saves it with `save_pretrained`; returns out_dir."""
  from magplus_jax import checkpointing  # pylint: disable=g-import-not-at-top
  obj = load_torch_file(path)
  kind = detect_kind(obj) if kind == "auto" else kind
  if kind == "base":
    if not isinstance(obj, dict) or "generator" not in obj:
      raise CheckpointMismatchError(f"{path!r} has no 'generator' entry (not ckpt_base.pth.tar)")
    params = convert_state_dict(obj["generator"])
    model, config = BASE_MODEL, {"config": "base_model/config/meta_portrait_256_eval.yaml"}
  else:
    sd = obj.get("params", obj.get("params_ema")) if isinstance(obj, dict) else None
    if sd is None:
      raise CheckpointMismatchError(f"{path!r} has no 'params' entry (not a BasicSR network file)")
    params = convert_sr_state_dict(sd)
    model, config = SR_MODEL, {"config": "sr_model/options/test/same_id_demo.yml"}
  return checkpointing.save_pretrained(out_dir, params, model=model, config=config, source=path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("checkpoint", help="ckpt_base.pth.tar or temporal_gfpgan.pth")
  parser.add_argument("out_dir", help="output directory (must not exist)")
  parser.add_argument("--kind", choices=("auto", "base", "sr"), default="auto")
  args = parser.parse_args(argv)
  out = convert_file(args.checkpoint, args.out_dir, args.kind)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  sys.exit(run_cli(main, "magplus_jax.ports.metaportrait"))
