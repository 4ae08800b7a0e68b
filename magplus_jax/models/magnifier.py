"""The MagPlus / DeMagPlus network: f(I_ref, I_t, alpha) -> frame whose motion from I_ref is alpha x.

FlowMag-style (Pan, Geng, Owens 2023): a U-Net on [I_ref, I_t, enc(alpha)] with enc a sinusoidal
encoding of alpha tiled over the image (per pixel, so region-targeted alpha maps work unchanged).
MagPlus is trained with alpha in [1, alpha_max], DeMagPlus with alpha in [1/alpha_max, 1]; the same
module serves both, only the data's alpha range differs.

Depth (levels) and base width come from the config: tiny configs train on CPU in minutes, the
FlowMag-size config (5 levels, width 64, 512x512) is what pod runs use.

Normalisation (`norm`):
  * "group" (default): GroupNorm. Statistics are per example, so the function an example sees does
    not depend on how the batch is split across devices: data-parallel, FSDP and single-device runs
    compute the same thing, and train == eval behaviour.
  * "batch": BatchNorm as in FlowMag. Under `jit` with the batch sharded over the mesh's data axis,
    XLA computes the batch mean/variance over the *global* batch (it inserts the cross-device
    reductions), so results match a single device with the same global batch, at the cost of two
    all-reduces per norm layer per step. Running statistics are used in eval mode.
  * "none".

Output (`output`):
  * "lagrangian" (default): the network moves pixels: it predicts, per pixel, how to mix and scale a
    multi-scale weight-free motion estimate, and I_t is resampled along alpha x that motion
    (models/lagrangian.py has the form and why). alpha = 1 and a still input give I_t exactly.
  * "eulerian_gate" (the session-2 default, kept as an ablation): clip(I_t + (alpha - 1) * (g * (I_t - I_ref) + r), 0, 1) with a
    per-pixel gate g (head channel 0 x GATE_GAIN) and an RGB residual r. g = 1, r = 0 is linear
    Eulerian magnification, nearly exact where alpha x motion is small against the texture scale
    and ghosting where it is not; the network learns where and how much to follow it, and r
    corrects it. `gate_init` (config.model.gate_init) is g at initialisation: 0 (default) starts
    at the identity, 1 at linear magnification.
  * "alpha_residual": clip(I_t + (alpha - 1) * delta, 0, 1): the network learns the residual alone.
  * "residual": clip(I_t + delta, 0, 1).
  * "sigmoid": sigmoid RGB as in FlowMag.
For the forms with (alpha - 1), alpha = 1 returns I_t exactly for any weights; attenuation
(alpha < 1) uses the same form (g = 1 is then a cross-fade towards I_ref). Their head is
zero-initialised apart from the gate's bias.

Why "lagrangian" is the default (session 4; numbers in magplus_jax/pretrained/README.md): on Oh et
al.'s protocol every Eulerian form is bounded by linear magnification (session 2 measured the
trained gate at linear magnification's motion error, SSIM 0.42-0.45 against phase-YIQ's 0.70),
while moving pixels along the estimated motion reaches 0.95+ with no training at all; what training
adds is the per-pixel choice of smoothing and trust (noise, aperture, alpha). Session 2's findings
on the Eulerian forms ("alpha_residual" collapsed to the identity; the gate stayed at linear
magnification through a gradient-based F) are why they are kept only as ablations.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from magplus_jax.models import lagrangian, magnifiers

Array = jax.Array
OUTPUTS = ("lagrangian", "eulerian_gate", "alpha_residual", "residual", "sigmoid")
# The gate is the head's channel 0 times this gain: Adam moves every weight by ~lr per step, and the
# gate has to travel ~1 while the RGB residual needs steps of ~1e-3 (pixel changes of sub-pixel
# motion); the gain gives the gate its own, larger step without a second optimizer.
GATE_GAIN = 4.0


def alpha_encoding(alpha: Array, num_features: int = 32, min_log2: float = -3.0,
                   max_log2: float = 7.0) -> Array:
  """alpha [...] -> [..., num_features]: sin/cos of 2*pi*alpha/lambda, lambda = 2^min_log2..2^max_log2."""
  n = num_features // 2
  wavelengths = 2.0 ** jnp.linspace(min_log2, max_log2, n, dtype=jnp.float32)
  arg = 2.0 * math.pi * alpha[..., None].astype(jnp.float32) / wavelengths
  return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def _norm(kind: str, ch: int, rngs: nnx.Rngs):
  if kind == "group":
    return nnx.GroupNorm(ch, num_groups=min(8, ch), rngs=rngs)
  if kind == "batch":
    return nnx.BatchNorm(ch, momentum=0.9, rngs=rngs)
  if kind == "none":
    return None
  raise ValueError(f"config.model.norm={kind!r}; choose 'group', 'batch' or 'none'")


class ConvBlock(nnx.Module):
  """Two 3x3 conv -> norm -> SiLU layers."""

  def __init__(self, cin: int, cout: int, norm: str, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
    self.norm1 = _norm(norm, cout, rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.norm2 = _norm(norm, cout, rngs)

  def _apply_norm(self, layer, x, train):
    if layer is None:
      return x
    if isinstance(layer, nnx.BatchNorm):
      return layer(x, use_running_average=not train)
    return layer(x)

  def __call__(self, x: Array, train: bool) -> Array:
    x = nnx.silu(self._apply_norm(self.norm1, self.conv1(x), train))
    return nnx.silu(self._apply_norm(self.norm2, self.conv2(x), train))


class MagnifierUNet(nnx.Module):
  """U-Net over [I_ref, I_t, enc(alpha)] -> magnified frame, all [B, H, W, C] in [0, 1]."""

  def __init__(self, *, levels: int = 5, width: int = 64, max_width: int = 512, norm: str = "group",
               alpha_features: int = 32, output: str = "lagrangian", gate_init: float = 0.0,
               rngs: nnx.Rngs):
    if output not in OUTPUTS:
      raise ValueError(f"config.model.output={output!r}; choose one of {OUTPUTS}")
    self.levels = levels
    self.alpha_features = alpha_features
    self.output = output
    widths = [min(width * 2 ** i, max_width) for i in range(levels)]
    cin = 6 + alpha_features + (lagrangian.EXTRA_CHANNELS if output == "lagrangian" else 0)
    self.down = nnx.List()
    for w in widths:
      self.down.append(ConvBlock(cin, w, norm, rngs))
      cin = w
    self.up_convs = nnx.List()
    self.up_blocks = nnx.List()
    for i in range(levels - 2, -1, -1):
      self.up_convs.append(nnx.Conv(widths[i + 1], widths[i], (3, 3), rngs=rngs))
      self.up_blocks.append(ConvBlock(2 * widths[i], widths[i], norm, rngs))
    # Zero-initialised head: a residual network starts as the exact identity magnifier.
    head_init = (nnx.initializers.lecun_normal() if output == "sigmoid"
                 else nnx.initializers.zeros_init())
    head_out = {"eulerian_gate": 4, "lagrangian": lagrangian.HEAD_CHANNELS}.get(output, 3)
    self.head = nnx.Conv(widths[0], head_out, (1, 1), kernel_init=head_init, rngs=rngs)
    if output == "lagrangian":  # start mostly at the 4-px blur (the best fixed scale), gain 1
      bias = [0.0] * lagrangian.HEAD_CHANNELS
      bias[lagrangian.BLUR_SIGMAS.index(4.0)] = 2.0
      self.head.bias[...] = jnp.array(bias, jnp.float32)
    if output == "eulerian_gate":  # gate_init (0: identity, 1: linear magnification), residual 0
      self.head.bias[...] = jnp.array([gate_init / GATE_GAIN, 0.0, 0.0, 0.0], jnp.float32)

  def __call__(self, ref: Array, frame: Array, alpha: Array, train: bool = False) -> Array:
    """ref, frame: [B, H, W, 3]; alpha: [B] or [B, H, W]. H, W divisible by 2^(levels-1)."""
    out, scales, alpha = self._unet(ref, frame, alpha, train)
    if self.output == "lagrangian":
      return lagrangian.magnify(ref, frame, lagrangian.combine(out, scales), alpha)
    if self.output == "sigmoid":
      return nnx.sigmoid(out)
    if self.output == "eulerian_gate":
      out = GATE_GAIN * out[..., :1] * (frame - ref) + out[..., 1:]
    if self.output in ("alpha_residual", "eulerian_gate"):
      out = out * (alpha[..., None] - 1.0).astype(out.dtype)
    return jnp.clip(frame + out, 0.0, 1.0)

  def motion(self, ref: Array, frame: Array, alpha: Array, train: bool = False
             ) -> tuple[Array, Array]:
    """The "lagrangian" output's motion f [B, H, W, 2] and alpha as a map [B, H, W]: what __call__
    resamples with (lagrangian.magnify(ref, frame, *self.motion(...)) is __call__), for losses that
    look at f through the parts of the output (losses.parts_loss)."""
    if self.output != "lagrangian":
      raise ValueError(f"motion() needs output='lagrangian'; this network's is {self.output!r}")
    out, scales, alpha = self._unet(ref, frame, alpha, train)
    return lagrangian.combine(out, scales), alpha

  def _unet(self, ref, frame, alpha, train):
    """(head output, the gated motion scales or None, alpha [B, H, W])."""
    b, h, w, _ = frame.shape
    div = 2 ** (self.levels - 1)
    if h % div or w % div:
      raise ValueError(f"image size {h}x{w} must be divisible by {div} for a {self.levels}-level U-Net")
    if alpha.ndim == 1:
      alpha = jnp.broadcast_to(alpha[:, None, None], (b, h, w))
    enc = alpha_encoding(alpha, self.alpha_features).astype(frame.dtype)
    x = jnp.concatenate([ref, frame, enc], axis=-1)
    scales = None
    if self.output == "lagrangian":
      scales = lagrangian.motion_scales(ref, frame, alpha)
      x = jnp.concatenate([x, lagrangian.features(scales, alpha)], axis=-1)
    skips = []
    for i, block in enumerate(self.down):
      if i > 0:
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
      x = block(x, train)
      skips.append(x)
    for j, (conv, block) in enumerate(zip(self.up_convs, self.up_blocks)):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = conv(x)
      x = block(jnp.concatenate([x, skips[-2 - j]], axis=-1), train)
    return self.head(x), scales, alpha


def create(model_config, seed: int = 0) -> MagnifierUNet:
  return MagnifierUNet(levels=model_config.levels, width=model_config.width,
                       max_width=model_config.get("max_width", 512), norm=model_config.norm,
                       alpha_features=model_config.get("alpha_features", 32),
                       output=model_config.get("output", OUTPUTS[0]),
                       gate_init=model_config.get("gate_init", 0.0), rngs=nnx.Rngs(seed))


def repeats_for(alpha: float, alpha_max: float, max_repeats: int) -> int:
  """How many applications of a network trained up to alpha_max reach `alpha` (>= 1 each)."""
  if not math.isfinite(alpha) or alpha <= 0:
    raise ValueError(f"alpha={alpha} is invalid: it must be a finite number > 0")
  a = max(alpha, 1.0 / alpha)
  k = max(1, math.ceil(math.log(a) / math.log(alpha_max) - 1e-9)) if a > 1 else 1
  if k > max_repeats:
    raise ValueError(f"alpha={alpha} needs {k} repeated applications of a network trained up to "
                     f"alpha_max={alpha_max}; at most {max_repeats} are allowed "
                     f"(config.generate.max_repeats)")
  return k


# Defaults for magnifier configs that do not say: the training range of the shipped networks
# (configs/pretrained.py, = config_lib.base_config().data.alpha_max) and a single application.
DEFAULT_ALPHA_MAX = 256.0
DEFAULT_MAX_REPEATS = 1


def _apply(model, frames, alpha, repeats: int):
  """The network over a clip: every frame against frame 0, `repeats` times at alpha**(1/repeats)."""
  b, t, h, w, c = frames.shape
  ref = jnp.broadcast_to(frames[:, :1], frames.shape).reshape(b * t, h, w, c)
  cur = frames.reshape(b * t, h, w, c)
  a = jnp.asarray(alpha, frames.dtype)
  if a.ndim not in (1, 4):
    raise ValueError(f"alpha must be [B] or [B, T, H, W]; got shape {a.shape}")
  a = jnp.repeat(a, t, axis=0) if a.ndim == 1 else a.reshape(b * t, h, w)
  a = a ** (1.0 / repeats)
  for _ in range(repeats):
    cur = model(ref, cur, a, train=False)
  out = cur.reshape(b, t, h, w, c)
  # The motion from frame 0 to itself is zero: frame 0 is returned exactly (the interface's promise;
  # the network alone reproduces it only up to its residual branch).
  return out.at[:, 0].set(frames[:, 0])


def _concrete_repeats(alpha, alpha_max: float, max_repeats: int) -> int:
  """repeats_for over every alpha in a concrete [B] or [B, T, H, W] alpha (its extremes)."""
  a = jnp.asarray(alpha)
  lo, hi = (float(v) for v in jax.device_get((jnp.min(a), jnp.max(a))))
  return max(repeats_for(hi, alpha_max, max_repeats), repeats_for(lo, alpha_max, max_repeats))


def device_repeats(alpha: Array, alpha_max: float, max_repeats: int) -> Array:
  """repeats_for on device, for a traced alpha: an int32 count in [1, max_repeats], capped there
  (a traced value cannot raise). float32 on device: the slack is 1e-6 (repeats_for, on the host in
  float64, uses 1e-9)."""
  a = jnp.max(jnp.maximum(alpha, 1.0 / alpha))
  k = jnp.ceil(jnp.log(a) / math.log(alpha_max) - 1e-6).astype(jnp.int32)
  return jnp.clip(k, 1, max_repeats)


def magnify_clip_fn(graphdef, repeats: int | None = None, *, alpha_max: float = DEFAULT_ALPHA_MAX,
                    max_repeats: int = DEFAULT_MAX_REPEATS):
  """Returns magnify_clip(variables, frames [B,T,H,W,3], alpha [B] | [B,T,H,W]) for the interface.

  Each frame is magnified against frame 0, k times with alpha**(1/k) each; output frame 0 is input
  frame 0 exactly. The work is one jitted function of (variables, frames, alpha) per k: alpha is a
  traced argument, so a new alpha value with the same k does not recompile.

  k: `repeats` when given (the caller's choice, not checked against alpha: e.g. a deliberate single
  application beyond alpha_max). Otherwise it follows alpha at call time: with a concrete alpha,
  k = repeats_for(alpha, alpha_max, max_repeats) over all its values (per-pixel maps: their
  extremes), which raises ValueError for an invalid alpha or one beyond alpha_max ** max_repeats;
  with a traced alpha (called inside the caller's jit / grad), k is chosen on device with
  lax.switch over 1..max_repeats (capped at max_repeats: a traced value cannot raise).
  """
  if repeats is not None and int(repeats) < 1:
    raise ValueError(f"magnifier repeats={repeats}: must be >= 1 (or unset: follow alpha)")

  def run(variables, frames, alpha, k):
    return _apply(nnx.merge(graphdef, *variables), frames, alpha, k)

  jitted = jax.jit(run, static_argnums=3)

  def magnify_clip(variables, frames, alpha):
    alpha = jnp.asarray(alpha, jnp.asarray(frames).dtype)
    if repeats is not None:
      return jitted(variables, frames, alpha, int(repeats))
    if not isinstance(alpha, jax.core.Tracer):
      return jitted(variables, frames, alpha, _concrete_repeats(alpha, alpha_max, max_repeats))
    if max_repeats == 1:
      return jitted(variables, frames, alpha, 1)
    k = device_repeats(alpha, alpha_max, max_repeats)
    branches = [functools.partial(jitted, k=i) for i in range(1, max_repeats + 1)]
    return jax.lax.switch(k - 1, branches, variables, frames, alpha)

  magnify_clip.jitted = jitted  # for tests / inspection
  return magnify_clip


def config_for(config, checkpoint: str = "", label: str = "magplus", *, max_repeats: int = 1,
               repeats: int | None = None):
  """The `build` config of a run's own network: config.model's architecture, config.data's alpha
  range, `checkpoint` ("" = untrained). repeats None: applications follow alpha at call time."""
  return ml_collections.ConfigDict(dict(
      name="magplus", model=config.model.to_dict(), checkpoint=checkpoint, seed=config.seed,
      label=label, repeats=repeats, alpha_max=float(config.data.alpha_max),
      max_repeats=int(max_repeats)))


def build(magnifier_config) -> magnifiers.Magnifier:
  """A Magnifier from `magnifier_config` (fields: model (ConfigDict), checkpoint ('' = untrained),
  seed, label; repeats (unset / None: follow alpha at call time), alpha_max (the network's training
  range, config.data.alpha_max), max_repeats (config.generate.max_repeats))."""
  model = create(magnifier_config.model, magnifier_config.get("seed", 0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  variables = (nnx.to_pure_dict(params), nnx.to_pure_dict(rest))
  if magnifier_config.get("checkpoint", ""):
    from magplus_jax import checkpointing  # pylint: disable=g-import-not-at-top
    variables = checkpointing.load_magnifier_variables(magnifier_config.checkpoint, variables)
  fn = magnify_clip_fn(graphdef, magnifier_config.get("repeats", None),
                       alpha_max=float(magnifier_config.get("alpha_max", DEFAULT_ALPHA_MAX)),
                       max_repeats=int(magnifier_config.get("max_repeats", DEFAULT_MAX_REPEATS)))
  return magnifiers.Magnifier(magnifier_config.get("label", "magplus"), variables, fn)
