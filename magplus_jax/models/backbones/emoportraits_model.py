"""EMOPortraits stage 1, part 2: the configuration, the 2-D networks and the model itself.

A Flax NNX port of github.com/neeek2303/EMOPortraits @ 7cb86416 (Drobyshev et al., CVPR 2024),
licensed **CC BY-NC-SA 4.0**: this port and weights converted from the release inherit it. The
3-D networks are in emoportraits_volume.py, the ResNets and the head-pose net in
emoportraits_helpers.py; the backbone adapter (`build`) in emoportraits.py.

Everything is channels-last: images [B, H, W, C], volumes [B, D, H, W, C]. The latent volume is
the local encoder's [B, 64, 64, 96 * 16] output viewed with torch's channel order c * 16 + d.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magplus_jax.models.backbones.emoportraits_helpers import ResNet, imagenet_normalize
from magplus_jax.models.backbones.emoportraits_volume import (
    GroupNorm, ResBlock, SNConv, SNLinear, Unet3D, VolumeResBlocks, WarpGenerator, WSConv, avg_pool,
    conv, identity_grid_2d, identity_grid_3d)
from magplus_jax.models.resample import grid_sample, grid_sample_3d, resize_bilinear

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EMOPortraitsConfig:
  """The architecture; defaults are the released checkpoint's (experiments/args.txt)."""
  image_size: int = 512
  latent_channels: int = 96
  latent_depth: int = 16
  latent_size: int = 64
  enc_channels: int = 128           # gen_num_channels * enc_channel_mult
  max_channels: int = 512
  gen_num_channels: int = 32
  embed_size: int = 4
  expression_channels: int = 128
  idt_image_size: int = 256
  expression_crop_size: int = 128   # exp_image_size // 2
  source_volume_blocks: int = 3
  unet_input_size: int = 8
  dec_blocks: int = 6
  dec_channel_mult: float = 2.0
  dec_ch_div_factor: float = 1.5
  dec_blocks_per_resolution: int = 2

  # Official options this port implements only in the released setting: name -> required value.
  _FIXED = dict(norm_layer_type="gn", gen_upsampling_type="trilinear",
                gen_downsampling_type="avgpool", grid_sample_padding_mode="zeros",
                use_sn=True, use_ws=True, use_back=False, volume_rendering=False,
                gen_use_adanorm=False, gen_use_adaconv=False, dec_use_adanorm=False,
                dec_use_adaconv=False, unet_first=False, cat_em=False, use_tensor=False,
                pred_volume_num_blocks=0, enc_block_type="res", warp_block_type="res",
                dec_up_block_type="res", gen_activation_type="relu", idt_backbone="resnet50",
                lpe_face_backbone="resnet18", lpe_final_pooling_type="avg", use_smart_scale=False,
                dec_bigger=False, dec_use_sg3_img_dec=False, expr_custom_w=False,
                tex_use_skip_resblock=True, tex_pred_rgb=False, warp_norm_grad=False,
                no_channel_increase_3d_source=True, estimate_head_pose_from_keypoints=True,
                warp_channel_mult=1.0, num_source_frames=1)

  @classmethod
  def from_official(cls, args: dict) -> "EMOPortraitsConfig":
    """From the official training args (meta["config"] / args.txt); refuses unported options."""
    bad = [f"{k}={args[k]!r} (need {v!r})" for k, v in cls._FIXED.items()
           if k in args and args[k] != v]
    if args.get("warp_output_size", args.get("gen_latent_texture_size")) != args.get(
        "gen_latent_texture_size"):
      bad.append("warp_output_size != gen_latent_texture_size")
    if bad:
      raise ValueError("EMOPortraits config uses options this port does not implement: "
                       + ", ".join(bad))
    return cls(
        image_size=int(args["image_size"]),
        latent_channels=int(args["gen_latent_texture_channels"]),
        latent_depth=int(args["gen_latent_texture_depth"]),
        latent_size=int(args["gen_latent_texture_size"]),
        enc_channels=int(args["gen_num_channels"] * args["enc_channel_mult"]),
        max_channels=int(args["gen_max_channels"]), gen_num_channels=int(args["gen_num_channels"]),
        embed_size=int(args["gen_embed_size"]),
        expression_channels=int(args["lpe_output_channels_expression"]),
        idt_image_size=int(args["idt_image_size"]),
        expression_crop_size=int(args["exp_image_size"]) // 2,
        source_volume_blocks=int(args["source_volume_num_blocks"]),
        unet_input_size=int(args["gen_dummy_input_size"]),
        dec_blocks=int(args["dec_num_blocks"]), dec_channel_mult=float(args["dec_channel_mult"]),
        dec_ch_div_factor=float(args["im_dec_ch_div_factor"]),
        dec_blocks_per_resolution=int(args["im_dec_num_lrs_per_resolution"]))


# ----------------------------------------------------------------------------- 2-D networks

class LocalEncoder(nnx.Module):
  """Masked source [B, S, S, 3] -> features [B, S/8, S/8, C*D] (viewed as the latent volume)."""

  def __init__(self, cfg: EMOPortraitsConfig, *, rngs: nnx.Rngs):
    n = int(math.log2(cfg.image_size // cfg.latent_size))
    chans = [cfg.enc_channels]
    for _ in range(n):
      chans.append(min(chans[-1] * 2, cfg.max_channels))
    self.from_rgb = conv(SNConv, 2, 3, chans[0], 7, bias=True, rngs=rngs)
    self.enc_blocks = nnx.List([ResBlock(2, a, b, resample="down", rngs=rngs)
                                for a, b in zip(chans[:-1], chans[1:])])
    self.final_norm = GroupNorm(chans[-1])
    self.final_conv = conv(WSConv, 2, chans[-1], cfg.latent_channels * cfg.latent_depth, 1,
                           bias=True, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    x = self.from_rgb(x)
    for block in self.enc_blocks:
      x = block(x)
    return self.final_conv(jax.nn.relu(self.final_norm(x)))


class IdentityEmbedder(nnx.Module):
  """ResNet-50 (GroupNorm) on a 256 px resize -> identity embedding [B, 4, 4, 512]."""

  def __init__(self, cfg: EMOPortraitsConfig, *, rngs: nnx.Rngs):
    self.image_size = cfg.idt_image_size
    self.net = ResNet(50, "gn", rngs=rngs)
    self.fc = conv(SNConv, 2, 2048, cfg.max_channels, 1, bias=False, rngs=rngs)

  def __call__(self, image: Array) -> Array:
    x = imagenet_normalize(resize_bilinear(image, (self.image_size, self.image_size)))
    f = self.fc(self.net(x))                       # the 1x1 head runs before the pooling
    return avg_pool(f, (f.shape[1] // 4, f.shape[2] // 4))


class ExpressionEmbedder(nnx.Module):
  """Pose-aligned 2x-zoomed face crop -> ResNet-18 (GroupNorm) -> expression vector [B, 128]."""

  def __init__(self, cfg: EMOPortraitsConfig, *, rngs: nnx.Rngs):
    self.crop_size = cfg.expression_crop_size
    self.net = ResNet(18, "gn", rngs=rngs)
    self.fc = conv(SNConv, 2, 512, cfg.expression_channels, 1, bias=False, rngs=rngs)
    self.pose_head = SNLinear(cfg.expression_channels * 16, cfg.expression_channels,
                              use_bias=False, rngs=rngs)

  def align(self, image: Array, theta: Array) -> Array:
    """The crop: inverse head pose restricted to x, y (rows/cols 0, 1, 3), then zoomed 2x."""
    inv = jnp.linalg.inv(theta.astype(jnp.float32))
    a = inv[:, jnp.array([0, 1, 3])][:, :, jnp.array([0, 1, 3])][:, :2]
    a = a * jnp.array([0.5, 0.5, 1.0], jnp.float32)
    grid = jnp.asarray(identity_grid_2d(self.crop_size, self.crop_size))
    grid = jnp.einsum("hwk,bjk->bhwj", jnp.concatenate([grid, jnp.ones_like(grid[..., :1])], -1),
                      a, precision=jax.lax.Precision.HIGHEST)
    return grid_sample(image, grid)

  def __call__(self, image: Array, theta: Array) -> tuple[Array, Array]:
    crop = self.align(image, theta)
    f = self.fc(self.net(imagenet_normalize(crop)))              # [B, 4, 4, 128]
    f = avg_pool(f, (f.shape[1] // 4, f.shape[2] // 4))
    flat = f.transpose(0, 3, 1, 2).reshape(f.shape[0], -1)      # torch's channel-major flatten
    return self.pose_head(flat), crop


class Decoder(nnx.Module):
  """Aligned volume viewed as [B, 64, 64, C*D] -> image [B, 512, 512, 3] in [0, 1]."""

  def __init__(self, cfg: EMOPortraitsConfig, *, rngs: nnx.Rngs):
    n_up = int(math.log2(cfg.image_size // cfg.latent_size))
    c = min(int(cfg.gen_num_channels * cfg.dec_channel_mult * 2 ** n_up), cfg.max_channels)
    self.res_in = conv(SNConv, 2, cfg.latent_channels * cfg.latent_depth, c, 1, bias=False,
                       rngs=rngs)
    self.res_blocks = nnx.List([ResBlock(2, c, c, rngs=rngs) for _ in range(cfg.dec_blocks)])
    blocks = []
    for _ in range(n_up):
      out = max(int(c / cfg.dec_ch_div_factor / 32) * 32, cfg.gen_num_channels)
      for k in range(cfg.dec_blocks_per_resolution):
        blocks.append(ResBlock(2, c, out, resample="up" if k == 0 else None, rngs=rngs))
        c = out
    self.img_blocks = nnx.List(blocks)
    self.head_norm = GroupNorm(c)
    self.head_conv = conv(WSConv, 2, c, 3, 1, bias=True, rngs=rngs)

  def __call__(self, feat: Array) -> dict[str, Array]:
    x = self.res_in(feat)
    for block in self.res_blocks:
      x = block(x)
    res_out = x
    for block in self.img_blocks:
      x = block(x)
    image = jax.nn.sigmoid(self.head_conv(jax.nn.relu(self.head_norm(x))))
    return dict(res_decoder_out=res_out, img_feat=x, image=image)


# ----------------------------------------------------------------------------- the model

def rotation_warp(theta: Array, depth: int, size: int, inverse: bool) -> Array:
  """Pose warp [B, D, H, W, 3]: identity grid (x, y, z, 1) @ M[:3]^T, M = theta or inv(theta)."""
  m = jnp.linalg.inv(theta.astype(jnp.float32)) if inverse else theta.astype(jnp.float32)
  grid = identity_grid_3d(depth, size, size)
  grid = np.concatenate([grid, np.ones_like(grid[..., :1])], -1)
  return jnp.einsum("dhwk,bjk->bdhwj", jnp.asarray(grid), m[:, :3],
                    precision=jax.lax.Precision.HIGHEST)


class EMOPortraits(nnx.Module):
  """The stage-1 model (va.Model's inference path). Submodules are named after the official ones."""

  def __init__(self, cfg: EMOPortraitsConfig = EMOPortraitsConfig(), *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.max_channels
    self.local_encoder = LocalEncoder(cfg, rngs=rngs)
    self.idt_embedder = IdentityEmbedder(cfg, rngs=rngs)
    self.expression_embedder = ExpressionEmbedder(cfg, rngs=rngs)
    self.pose_unsqueeze = nnx.Linear(cfg.expression_channels, c * cfg.embed_size ** 2,
                                     use_bias=False, rngs=rngs)
    self.warp_embed_head = conv(SNConv, 2, c, c, 1, bias=False, rngs=rngs)
    gen = dict(embed_channels=c, embed_size=cfg.embed_size, depth=cfg.latent_depth,
               size=cfg.latent_size, base_channels=cfg.gen_num_channels, max_channels=c)
    self.xy_generator = WarpGenerator(rngs=rngs, **gen)
    self.uv_generator = WarpGenerator(rngs=rngs, **gen)
    self.volume_source = VolumeResBlocks(cfg.latent_channels, cfg.source_volume_blocks, rngs=rngs)
    self.volume_process = Unet3D(rngs=rngs, channels=cfg.latent_channels, depth=cfg.latent_depth,
                                 size=cfg.latent_size, input_size=cfg.unet_input_size,
                                 max_channels=c)
    self.decoder = Decoder(cfg, rngs=rngs)

  def warp_embed(self, pose_embed: Array, idt_embed: Array) -> Array:
    """Expression [B, 128] + identity [B, s, s, 512] -> warp embedding E [B, 512, s*s]."""
    b, s = pose_embed.shape[0], self.cfg.embed_size
    p = self.pose_unsqueeze(pose_embed).reshape(b, -1, s, s).transpose(0, 2, 3, 1)
    e = self.warp_embed_head((p + idt_embed) * 0.5)
    return e.reshape(b, s * s, -1).transpose(0, 2, 1)

  def to_volume(self, feat: Array) -> Array:
    """[B, H, W, C*D] -> [B, D, H, W, C]; torch's view puts channel c*D + d."""
    b, h, w, _ = feat.shape
    return feat.reshape(b, h, w, -1, self.cfg.latent_depth).transpose(0, 4, 1, 2, 3)

  @staticmethod
  def from_volume(vol: Array) -> Array:
    b, d, h, w, c = vol.shape
    return vol.transpose(0, 2, 3, 4, 1).reshape(b, h, w, c * d)

  def encode_source(self, source: Array, theta: Array) -> dict[str, Array]:
    """Masked source [B, S, S, 3] and its head pose [B, 4, 4] -> canonical volume and embeddings.

    Precision follows the parameters (see `cast_params`): the embedders and warp generators run
    in float32 whatever the source dtype, the volume networks in their parameters' dtype.
    """
    cfg = self.cfg
    f32 = source.astype(jnp.float32)
    idt_embed = self.idt_embedder(f32)
    heavy = self.local_encoder.from_rgb.kernel.dtype
    latent = self.to_volume(self.local_encoder(source.astype(heavy)))
    pose_embed, img_align = self.expression_embedder(f32, theta)
    warp_embed = self.warp_embed(pose_embed, idt_embed)
    xy_warp = self.xy_generator(warp_embed)
    volume_source = self.volume_source(latent)
    rot = rotation_warp(theta, cfg.latent_depth, cfg.latent_size, inverse=True)
    rot_warped = grid_sample_3d(volume_source, rot)
    xy_warped = grid_sample_3d(rot_warped, xy_warp)
    canonical = self.volume_process(xy_warped)
    return dict(idt_embed=idt_embed, pose_embed=pose_embed, img_align=img_align,
                warp_embed=warp_embed, xy_warp=xy_warp, rotation_warp=rot, latent_volume=latent,
                volume_source=volume_source, rot_warped=rot_warped, xy_warped=xy_warped,
                canonical=canonical)

  def drive(self, canonical: Array, idt_embed: Array, pose_embed: Array,
            theta: Array) -> dict[str, Array]:
    """Render frames: canonical [N, D, H, W, C], idt [N, s, s, 512], expression [N, 128], pose."""
    cfg = self.cfg
    warp_embed = self.warp_embed(pose_embed, idt_embed)
    uv_warp = self.uv_generator(warp_embed)
    rot = rotation_warp(theta, cfg.latent_depth, cfg.latent_size, inverse=False)
    uv_warped = grid_sample_3d(canonical, uv_warp)
    aligned = grid_sample_3d(uv_warped, rot)
    out = self.decoder(self.from_volume(aligned))
    return dict(warp_embed=warp_embed, uv_warp=uv_warp, rotation_warp=rot, uv_warped=uv_warped,
                aligned=aligned, **out)


# The networks that carry almost all of the FLOPs (local encoder 1.1, U-Net 2.5, decoder 0.95 of
# ~5 TFLOP per source + frame). Only these take a reduced compute dtype: the embedders and the
# warp generators are cheap, and their outputs (embeddings -> warp coordinates) are the most
# sensitive values of the model: a bfloat16 warp (3 significant digits, ~0.1 voxel) resamples the
# strongly varying encoder volume visibly wrong.
HEAVY_SUBMODULES = ("local_encoder", "volume_source", "volume_process", "decoder")


def cast_params(model_params: dict, dtype) -> dict:
  """EMOPortraits params (pure dict) with HEAVY_SUBMODULES cast to `dtype`, the rest float32."""
  return {k: jax.tree.map(lambda a: jnp.asarray(a).astype(dtype if k in HEAVY_SUBMODULES
                                                          else jnp.float32), v)
          for k, v in model_params.items()}
