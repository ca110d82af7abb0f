"""The jitted UnityDiT denoising loop for every sampling task, with classifier-free guidance.

Tasks (the training routes of objective.py, run as ODE integrations):
  rgb       text -> RGB, no modality stream (the T2V path): RGB integrated.
  joint     text -> RGB + modality: both streams integrated on the same schedule.
  control   modality video + text -> RGB: the modality stream is held clean (t_m = 0) and is
            returned bit-for-bit; only RGB is integrated.
  estimate  RGB video -> modality: RGB held clean (t_r = 0) and returned bit-for-bit; only the
            modality stream is integrated.
With `objective.timesteps="shared"` (release variant) the model was trained with both streams
conditioned on the noised stream's t, so the clean stream is conditioned on t here too.

Guidance (samplers.guide): branches evaluated in ONE forward by concatenating along the batch:
  [conditional | empty caption (text guidance) | condition stream dropped, modality_id = -1
  (condition guidance, control only)]. A branch is only built when its scale may differ from 1
  (a static flag), so scale 1 is exactly the conditional-only computation.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unity_jax.flow import samplers

TASKS = ("rgb", "joint", "control", "estimate")


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """Everything static about one compiled sampler (a jit cache key with the input shapes)."""
  task: str
  solver: str = "euler"
  text_guidance: bool = False       # evaluate the empty-caption branch
  condition_guidance: bool = False  # control only: evaluate the condition-dropped branch
  shared_timesteps: bool = False    # config.objective.timesteps == "shared"

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown sampling task {self.task!r}; expected one of {list(TASKS)}")
    samplers.check_solver(self.solver)
    if self.condition_guidance and self.task != "control":
      raise ValueError(f"condition guidance applies to task 'control' only, not {self.task!r}")

  @property
  def integrated(self) -> tuple[str, ...]:
    """Streams the ODE moves; the others stay exactly as given."""
    return {"rgb": ("rgb",), "joint": ("rgb", "modality"), "control": ("rgb",),
            "estimate": ("modality",)}[self.task]

  @property
  def num_branches(self) -> int:
    return 1 + int(self.text_guidance) + int(self.condition_guidance)


def _tile(tree, times: int):
  return jax.tree.map(lambda x: jnp.concatenate([x] * times, axis=0), tree)


def make_sample_fn(model, spec: SamplerSpec, rules=None):
  """Builds sample(params, inputs, timesteps, guidance_scale, condition_scale) (pure; jit it).

  Args of the returned function:
    params: model parameters.
    inputs: dict with
      rgb: float32 [B, F, H, W, C] — noise at t = 1 where RGB is integrated, else clean latents.
      caption, empty_caption: {"tokens": int32 [B, Lc], "mask": bool [B, Lc]}.
      (all tasks but rgb) modality: float32 [B, 1, F, H, W, C] noise or clean latents;
      modality_id: int32 [B, 1]; prompt: {"tokens": int32 [B, 1, Lm], "mask": bool [B, 1, Lm]}.
    timesteps: float32 [N + 1] from 1 down to 0 (schedules.sampling_schedule).
    guidance_scale, condition_scale: float32 scalars (used only when the spec has the branch).
  Returns:
    (rgb float32 [B, F, H, W, C], modality float32 [B, 1, F, H, W, C] or None): latents at t = 0.
  """
  has_modality = spec.task != "rgb"

  def sample(params, inputs, timesteps, guidance_scale, condition_scale):
    batch = inputs["rgb"].shape[0]
    captions = [inputs["caption"]] + ([inputs["empty_caption"]] if spec.text_guidance else [])
    modality_ids = [inputs["modality_id"]] * len(captions) if has_modality else []
    if spec.condition_guidance:
      captions.append(inputs["caption"])
      modality_ids.append(jnp.full_like(inputs["modality_id"], -1))
    caption = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *captions)
    modality_id = jnp.concatenate(modality_ids, axis=0) if has_modality else None
    branches = spec.num_branches

    def velocity(state, t):
      streams = {"rgb": inputs["rgb"], **({"modality": inputs["modality"]} if has_modality
                                          else {})}
      streams.update(state)
      t_full = jnp.full((batch,), t, jnp.float32)
      t_of = lambda name: (t_full if name in spec.integrated or spec.shared_timesteps
                           else jnp.zeros_like(t_full))
      model_inputs = dict(rgb=_tile(streams["rgb"], branches), t_rgb=_tile(t_of("rgb"), branches),
                          caption=caption)
      if has_modality:
        model_inputs.update(modality=_tile(streams["modality"], branches),
                            modality_id=modality_id,
                            t_modality=_tile(t_of("modality")[:, None], branches),
                            prompt=_tile(inputs["prompt"], branches))
      with nn.logical_axis_rules(rules or ()):
        rgb_v, modality_v = model.apply({"params": params}, **model_inputs)
      out = {"rgb": rgb_v, "modality": modality_v}
      out = {name: out[name] for name in spec.integrated}
      split = [jax.tree.map(lambda x, k=k: x[k * batch:(k + 1) * batch], out)
               for k in range(branches)]
      unconditionals = []
      if spec.text_guidance:
        unconditionals.append((split[1], guidance_scale))
      if spec.condition_guidance:
        unconditionals.append((split[-1], condition_scale))
      return samplers.guide(split[0], unconditionals)

    start = {name: inputs[name] for name in spec.integrated}
    final = samplers.integrate(velocity, start, timesteps, spec.solver)
    rgb = final.get("rgb", inputs["rgb"])
    modality = final.get("modality", inputs["modality"]) if has_modality else None
    return rgb, modality

  return sample
