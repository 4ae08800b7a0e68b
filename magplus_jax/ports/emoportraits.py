"""Converters for EMOPortraits: the stage-1 model, its head-pose net, and BiSeNet face parsing.

    python -m magplus_jax.ports.emoportraits [--kind stage1|headpose] CHECKPOINT OUT_DIR

  stage1   : the released model file (third-party code names it checkpoints/328_model.pth, inside
             logs.zip), a flat va.Model state dict; `--args args.txt` optionally gives the
             experiment's training args (default: the released experiment's, built in).
  headpose : repos/head_pose_regressor.pth (repos.zip), a torchvision resnet18(num_classes=9).
The third file inference uses, BiSeNet face parsing (the source mask), has its own converter:
magplus_jax/ports/bisenet.py.

The weights are EMOPortraits' (github.com/neeek2303/EMOPortraits, **CC BY-NC-SA 4.0**); converted
directories carry the same licence.

What is folded (exactly; everything else is copied, only transposed to Flax layouts):
  * spectral norm, 110 layers (keys `<p>.weight_orig`, `<p>.weight_u`, `<p>.weight_v`): in eval mode
    torch runs no power iteration and uses W = weight_orig / (u . (W_mat v)), W_mat =
    weight_orig.reshape(out, -1), with the stored u and v; W is computed here (float64 per tensor,
    stored float32).
  * weight standardisation, 65 convs (`Conv2d_ws` / `Conv3d_ws`: a 4-D/5-D plain `<p>.weight`):
    W = (w - mean_fanin(w)) / (std_fanin(w, unbiased) + 1e-5) (the epsilon is added to the std).
  Not folded: GroupNorm / BatchNorm (kept as layers; BatchNorm running statistics are copied),
  the adaptive-norm projectors (they act on the per-frame embedding).

Loading is non-strict, as the official `load_state_dict(strict=False)`: keys the model does not use
(discriminators, `bn.*`, the constant buffers `*.mean`, `*.std`, `*identity_grid*`,
`aligned_keypoints`, which the port computes itself) are ignored. Every key the port needs must be
present with its shape, else CheckpointMismatchError names the missing keys (and the unexpected
ones, which identify the file that was given instead).
"""
from __future__ import annotations

import argparse
import re
import sys
import numpy as np
from flax import nnx

from magplus_jax.ports.common import (CheckpointMismatchError, check_state_dict, conv_kernel,
                                      linear_kernel, load_torch_file, strip_prefix)

# The released experiment's args that define the architecture (experiments/args.txt).
RELEASED_ARGS = dict(
    image_size=512, gen_latent_texture_channels=96, gen_latent_texture_depth=16,
    gen_latent_texture_size=64, gen_num_channels=32, enc_channel_mult=4.0, gen_max_channels=512,
    gen_embed_size=4, lpe_output_channels_expression=128, idt_image_size=256, exp_image_size=256,
    source_volume_num_blocks=3, gen_dummy_input_size=8, dec_num_blocks=6, dec_channel_mult=2.0,
    im_dec_ch_div_factor=1.5, im_dec_num_lrs_per_resolution=2)


# ----------------------------------------------------------------------------- folding

def fold_spectral_norm(w_orig: np.ndarray, u: np.ndarray, v: np.ndarray, name: str) -> np.ndarray:
  w = np.asarray(w_orig, np.float64)
  sigma = float(np.asarray(u, np.float64) @ (w.reshape(w.shape[0], -1) @ np.asarray(v, np.float64)))
  if not np.isfinite(sigma) or sigma == 0.0:
    raise CheckpointMismatchError(f"{name}: spectral norm sigma = u.(W v) is {sigma}; corrupt u/v")
  return (w / sigma).astype(np.float32)


def fold_weight_standardization(w: np.ndarray) -> np.ndarray:
  w = np.asarray(w, np.float64)
  flat = w.reshape(w.shape[0], -1)
  centred = flat - flat.mean(axis=1, keepdims=True)
  std = centred.std(axis=1, ddof=1, keepdims=True) + 1e-5
  return (centred / std).reshape(w.shape).astype(np.float32)


# ----------------------------------------------------------------------------- names

def _sub(rules, name: str) -> str:
  for pat, rep in rules:
    name = re.sub(pat, rep, name)
  return name


_RESBLOCK = [(r"\.in_norm$", ".block_feats.0"), (r"\.in_conv$", ".block_feats.2"),
             (r"\.mid_norm$", ".block_feats.3"), (r"\.out_conv$", ".block.0"),
             (r"\.skip$", ".skip.0")]
RESNET_RULES = [(r"\.downsample_conv$", ".downsample.0"), (r"\.downsample_norm$", ".downsample.1")]


def stage1_rules(image_size: int):
  enc = lambda m: f"local_encoder_nw.enc_{m[1]}_block={image_size >> int(m[1])}px"
  return [
      (r"^local_encoder\.from_rgb", f"local_encoder_nw.from_rgb_{image_size}px"),
      (r"^local_encoder\.enc_blocks\.(\d+)", enc),
      (r"^local_encoder\.final_norm", "local_encoder_nw.finale_layers.0"),
      (r"^local_encoder\.final_conv", "local_encoder_nw.finale_layers.2"),
      (r"^idt_embedder\.(net|fc)", r"idt_embedder_nw.net.\1"),
      (r"^idt_embedder_nw\.net\.net", "idt_embedder_nw.net"),
      (r"^expression_embedder\.(net|fc)", r"expression_embedder_nw.net_face.net.\1"),
      (r"^expression_embedder_nw\.net_face\.net\.net", "expression_embedder_nw.net_face.net"),
      (r"^expression_embedder\.pose_head", "expression_embedder_nw.net_face.pose_head"),
      (r"^pose_unsqueeze", "pose_unsqueeze_nw"),
      (r"^warp_embed_head", "warp_embed_head_orig_nw"),
      (r"^(xy|uv)_generator\.blocks", r"\1_generator_nw.blocks_3d"),
      (r"^(xy|uv)_generator\.pre_head_norm", r"\1_generator_nw.pre_head.0"),
      (r"^(xy|uv)_generator\.head", r"\1_generator_nw.head.0.0"),
      (r"^(xy|uv)_generator\.first_conv", r"\1_generator_nw.first_conv"),
      (r"^volume_source\.blocks", "volume_source_nw.net.net"),
      (r"^volume_process\.down_blocks", "volume_process_nw.blocks_3d_down"),
      (r"^volume_process\.up_blocks", "volume_process_nw.blocks_3d_up"),
      (r"^volume_process\.skip_blocks", "volume_process_nw.skip_blocks_3d_up"),
      (r"^volume_process\.head_norm", "volume_process_nw.head.0"),
      (r"^volume_process\.head_conv", "volume_process_nw.head.2"),
      (r"^volume_process$", "volume_process_nw"),
      (r"^decoder\.res_in", "decoder_nw.res_decoder.0"),
      (r"^decoder\.res_blocks\.(\d+)", lambda m: f"decoder_nw.res_decoder.{int(m[1]) + 1}"),
      (r"^decoder\.img_blocks", "decoder_nw.img_decoder.dec_img_blocks"),
      (r"^decoder\.head_norm", "decoder_nw.img_decoder.dec_img_head.0"),
      (r"^decoder\.head_conv", "decoder_nw.img_decoder.dec_img_head.2"),
  ] + _RESBLOCK + RESNET_RULES


HEADPOSE_RULES = [(r"^net\.", "")] + RESNET_RULES


# ----------------------------------------------------------------------------- generic engine

def _torch_entries(module, prefix: str, path: tuple) -> list[tuple]:
  """[(flax leaf path, {torch key: torch shape}, fn(sd) -> flax array)] for one module."""
  from magplus_jax.models.backbones.emoportraits_volume import (  # pylint: disable=g-import-not-at-top
      AdaptiveGroupNorm, GroupNorm, SNConv, SNLinear, Unet3D, WSConv)
  p = prefix + "."
  out = []

  def kernel(shape_flax, is_conv):
    if is_conv:
      return (shape_flax[-1], shape_flax[-2]) + tuple(shape_flax[:-2])
    return (shape_flax[1], shape_flax[0])

  if isinstance(module, (nnx.Conv, nnx.Linear)):
    is_conv = isinstance(module, nnx.Conv)
    tshape = kernel(module.kernel.shape, is_conv)
    layout = conv_kernel if is_conv else linear_kernel
    if isinstance(module, (SNConv, SNLinear)):
      keys = {p + "weight_orig": tshape, p + "weight_u": (tshape[0],),
              p + "weight_v": (int(np.prod(tshape[1:])),)}
      fn = lambda sd: layout(fold_spectral_norm(sd[p + "weight_orig"], sd[p + "weight_u"],
                                                sd[p + "weight_v"], prefix))
    elif isinstance(module, WSConv):
      keys = {p + "weight": tshape}
      fn = lambda sd: layout(fold_weight_standardization(sd[p + "weight"]))
    else:
      keys = {p + "weight": tshape}
      fn = lambda sd: layout(sd[p + "weight"])
    out.append((path + ("kernel",), keys, fn))
    if module.bias is not None:
      out.append((path + ("bias",), {p + "bias": module.bias.shape}, lambda sd: sd[p + "bias"]))
  elif isinstance(module, (GroupNorm, AdaptiveGroupNorm, nnx.BatchNorm)):
    c = module.scale.shape
    out.append((path + ("scale",), {p + "weight": c}, lambda sd: sd[p + "weight"]))
    out.append((path + ("bias",), {p + "bias": c}, lambda sd: sd[p + "bias"]))
    if isinstance(module, nnx.BatchNorm):
      out.append((path + ("mean",), {p + "running_mean": c}, lambda sd: sd[p + "running_mean"]))
      out.append((path + ("var",), {p + "running_var": c}, lambda sd: sd[p + "running_var"]))
  elif isinstance(module, Unet3D):
    shape = module.input_tensor.shape
    tshape = (shape[0], shape[-1]) + tuple(shape[1:-1])
    key = p + "input_tensor"
    out.append((path + ("input_tensor",), {key: tshape},
                lambda sd: np.transpose(sd[key], (0, 2, 3, 4, 1))))
  return out


def _projector_entries(model, rules) -> list[tuple]:
  """AdaptiveGroupNorm projections live in `<gen>.projector.{u,v}.<k>`, k counting the block norms."""
  from magplus_jax.models.backbones.emoportraits_volume import AdaptiveGroupNorm  # pylint: disable=g-import-not-at-top
  out = []
  for gen in ("xy_generator", "uv_generator"):
    k = 0
    for i, block in enumerate(getattr(model, gen).blocks):
      for norm_name in ("in_norm", "mid_norm"):
        norm = getattr(block, norm_name)
        assert isinstance(norm, AdaptiveGroupNorm)
        base = _sub(rules, gen + ".first_conv").rsplit(".", 1)[0] + ".projector."
        path = (gen, "blocks", i, norm_name)
        ku, kv = f"{base}u.{k}", f"{base}v.{k}"
        out.append((path + ("proj_u",), {ku: norm.proj_u.shape}, lambda sd, ku=ku: sd[ku]))
        out.append((path + ("proj_v",), {kv: norm.proj_v.shape}, lambda sd, kv=kv: sd[kv]))
        k += 1
  return out


def make_plan(abstract_module, rules, extra=None) -> list[tuple]:
  entries = []
  for path, module in nnx.iter_modules(abstract_module):
    prefix = _sub(rules, ".".join(str(x) for x in path))
    entries += [(fp, keys, fn) for fp, keys, fn in _torch_entries(module, prefix, tuple(path))]
  return entries + (extra(abstract_module) if extra else [])


def expected_spec(plan) -> dict:
  spec = {}
  for _, keys, _ in plan:
    spec.update(keys)
  return spec


def unwrap(sd: dict) -> dict:
  """The flat state dict inside a loaded file: array entries only, DataParallel's `module.` dropped,
  a `state_dict` / `model` wrapper opened."""
  for key in ("state_dict", "model"):
    if isinstance(sd.get(key), dict) and not any(hasattr(v, "shape") for v in sd.values()):
      sd = sd[key]
  sd = {k: v for k, v in sd.items() if hasattr(v, "shape")}
  if sd and all(k.startswith("module.") for k in sd):
    sd = strip_prefix(sd, "module.")
  return sd


def convert_with_plan(sd: dict, plan, what: str) -> dict:
  """Checks `sd` against the plan's keys and shapes and builds the Flax params pure dict."""
  sd = unwrap(sd)
  expected = expected_spec(plan)
  missing = [k for k in expected if k not in sd]
  # Non-strict like the official loader: extra keys are ignored unless something is missing, in
  # which case they are shown too (they tell which file this really is).
  check_state_dict(sd if missing else {k: sd[k] for k in expected}, expected, what)
  params: dict = {}
  for fpath, _, fn in plan:
    node = params
    for key in fpath[:-1]:
      node = node.setdefault(key, {})
    node[fpath[-1]] = np.asarray(fn(sd), np.float32)
  return params


def _abstract(name: str, cfg=None):
  from magplus_jax.models.backbones.emoportraits import EMOPortraitsConfig, abstract_modules  # pylint: disable=g-import-not-at-top
  return abstract_modules(cfg or EMOPortraitsConfig())[name]


def stage1_plan(cfg=None):
  from magplus_jax.models.backbones.emoportraits import EMOPortraitsConfig  # pylint: disable=g-import-not-at-top
  cfg = cfg or EMOPortraitsConfig()
  rules = stage1_rules(cfg.image_size)
  return make_plan(_abstract("model", cfg), rules, lambda m: _projector_entries(m, rules))


def convert_state_dict(sd: dict, cfg=None) -> dict:
  """Stage-1 state dict (va.Model names, numpy) -> pure-dict params of `EMOPortraits`."""
  return convert_with_plan(sd, stage1_plan(cfg), "EMOPortraits stage-1 checkpoint")


def convert_headpose_state_dict(sd: dict) -> dict:
  """torchvision resnet18(num_classes=9) state dict -> params of `HeadPoseNet`."""
  plan = make_plan(_abstract("headpose"), HEADPOSE_RULES)
  return convert_with_plan(sd, plan, "EMOPortraits head-pose ResNet-18 checkpoint")


def _typed(v: str):
  if v in ("True", "False"):
    return v == "True"
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return v


def parse_args_txt(path: str) -> dict:
  """An official args.txt -> dict: the training dump ('key: value' lines) or a command line."""
  with open(path) as f:
    text = f.read()
  lines = [line for line in text.splitlines() if line.strip()]
  if lines and all(": " in line for line in lines):
    pairs = [line.split(": ", 1) for line in lines]
  else:
    toks = text.split()
    pairs = [(t[2:], toks[i + 1] if i + 1 < len(toks) and not toks[i + 1].startswith("--")
              else "True") for i, t in enumerate(toks) if t.startswith("--")]
  return {k.strip(): _typed(v.strip()) for k, v in pairs}


def convert_file(checkpoint: str, out_dir: str, kind: str = "stage1",
                 args_txt: str | None = None) -> str:
  """The CLI's work: read, convert, save with `save_pretrained`. Returns out_dir."""
  from magplus_jax.checkpointing import save_pretrained  # pylint: disable=g-import-not-at-top
  if kind not in ("stage1", "headpose"):
    raise ValueError(f"--kind {kind!r}: choose stage1 or headpose (BiSeNet: "
                     "python -m magplus_jax.ports.bisenet)")
  sd = load_torch_file(checkpoint)
  if not isinstance(sd, dict):
    raise CheckpointMismatchError(f"{checkpoint!r} does not hold a state dict")
  if kind == "stage1":
    from magplus_jax.models.backbones.emoportraits import EMOPortraitsConfig  # pylint: disable=g-import-not-at-top
    official = dict(RELEASED_ARGS, **(parse_args_txt(args_txt) if args_txt else {}))
    cfg = EMOPortraitsConfig.from_official(official)
    params = convert_state_dict(sd, cfg)
    config = {"architecture": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
              "license": "CC BY-NC-SA 4.0 (EMOPortraits)"}
    return save_pretrained(out_dir, params, model="emoportraits", config=config, source=checkpoint)
  return save_pretrained(out_dir, convert_headpose_state_dict(sd), model="emoportraits_headpose",
                         config={"license": "CC BY-NC-SA 4.0 (EMOPortraits)"}, source=checkpoint)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("checkpoint")
  ap.add_argument("out_dir")
  ap.add_argument("--kind", default="stage1", choices=("stage1", "headpose"))
  ap.add_argument("--args", dest="args_txt", default=None,
                  help="the experiment's args.txt (stage1 only; default: the released one's)")
  a = ap.parse_args(argv)
  print(convert_file(a.checkpoint, a.out_dir, a.kind, a.args_txt))


if __name__ == "__main__":
  from magplus_jax.ports.common import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(lambda: main(sys.argv[1:]), "magplus_jax.ports.emoportraits")
