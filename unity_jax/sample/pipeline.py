"""Programmatic sampling: `Pipeline` (docs/sampling.md).

  pipe = Pipeline.from_workdir("runs/tiny")                 # latest checkpoint, EMA weights
  out = pipe.generate("a red ball rolls left", modality="depth", num_steps=50, seed=0)
  out.rgb, out.modality, out.values                         # uint8 [T,H,W,3] ×2, decoded numbers
  pipe.control(condition=video, modality="depth", prompt="...")
  pipe.estimate(video=video, modality="depth")

The modality is chosen per call (plug and play); its C_m prompt comes from data/prompts.py
(`targets` fills the segmentation template, "segmentation masks of two persons ..."). A list of
prompts (or a [B, T, H, W, 3] batch of videos) is one batch, padded to a multiple of the mesh's
data-parallel size and sharded over it. Sample i of a call with `seed=s` uses seed s + i, so
`generate([a, b], seed=3)[1]` starts from the same noise as `generate(b, seed=4)`.
"""

import dataclasses
import os
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax import model as model_lib
from unity_jax import xla_options
from unity_jax.data import modality_render
from unity_jax.data import prompts as prompts_lib
from unity_jax.flow import samplers
from unity_jax.flow import schedules
from unity_jax.model import codec as codec_lib
from unity_jax.model import text as text_lib
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.parallel import rules as rules_lib
from unity_jax.sample import denoise
from unity_jax.sample import text_embedder
from unity_jax.sample import video_io

WEIGHTS = ("ema", "raw")


@dataclasses.dataclass
class SampleOutput:
  """One sample.

  rgb: uint8 [T, H, W, 3] — generated (generate, control) or the given video (estimate).
  modality: uint8 [T, H, W, 3] or None — generated (joint generate, estimate), the given
    condition (control), None for RGB-only generation.
  values: decoded numbers of a generated modality (modality_render.decode_modality: depth
    float32 [T, H, W] normalised disparity, flow float32 [T, H, W, 2] pixels, segmentation int32
    [T, H, W] ids, skeleton float32 [T, P, 17, 3], densepose (part uint8, uv float32)); None
    when no modality was generated.
  """
  task: str
  prompt: str
  modality_name: str | None
  seed: int
  rgb: np.ndarray
  modality: np.ndarray | None = None
  values: Any = None

  def panels(self, ground_truth=None) -> tuple[list[np.ndarray], list[str]]:
    """(videos, labels) of the grid: RGB | modality | ground truth (when given)."""
    panels, names = [self.rgb], ["RGB"]
    if self.modality is not None:
      panels.append(self.modality)
      names.append(self.modality_name + (" (input)" if self.task == "control" else ""))
    if ground_truth is not None:
      panels.append(video_io.as_video(ground_truth, "ground_truth"))
      names.append("ground truth")
    return panels, names

  def grid(self, ground_truth=None, *, scale: int = 1, labels: bool = True) -> np.ndarray:
    """Side-by-side video uint8 [T, H', W', 3]: RGB | modality | ground truth (when given)."""
    panels, names = self.panels(ground_truth)
    return video_io.side_by_side(panels, scale=scale, labels=names if labels else None)

  def save(self, path: str, ground_truth=None, *, scale: int = 2, fps: int = 8) -> str:
    """Writes the grid to .mp4 / .gif / .png (frame sheet) / .npy; returns the path."""
    panels, names = self.panels(ground_truth)
    return video_io.write_grid(path, panels, labels=names, scale=scale, fps=fps)


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  """A ConfigDict from the trainer's config.json (JSON lists back to tuples, nested dicts)."""
  def convert(value):
    if isinstance(value, dict):
      return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
    if isinstance(value, list):
      items = [convert(v) for v in value]
      return items if any(isinstance(v, ml_collections.ConfigDict) for v in items) else tuple(items)
    return value
  return convert(dict(data))


def _sampling_mesh(config):
  """config's mesh when it fits the local devices, else pure data parallelism over them."""
  try:
    return mesh_lib.make_mesh(config)
  except config_lib.ConfigError:
    fallback = ml_collections.ConfigDict(config.to_dict())
    fallback.mesh.update(data=-1, fsdp=1, tensor=1, context=1)
    return mesh_lib.make_mesh(fallback)


def _warn_if_truncated(texts: Sequence[str], max_len: int, what: str, key: str) -> None:
  """Warns (UserWarning) when the model will see only the first max_len tokens of some texts:
  it was trained on texts of at most that length, so the tail cannot condition the sample."""
  cut = text_lib.truncated(texts, max_len)
  if cut.any():
    longest = max(text_lib.token_length(t) for t in texts)
    warnings.warn(f"{int(cut.sum())} {what}(s) of up to {longest} tokens are truncated to the "
                  f"checkpoint's {key}={max_len} tokens", stacklevel=3)

def _as_list(value, batch: int, name: str) -> list:
  """A scalar broadcast to `batch` items, or a sequence checked to have `batch` items."""
  if isinstance(value, (list, tuple)):
    if len(value) != batch:
      raise ValueError(f"{name}: got {len(value)} values for a batch of {batch}")
    return list(value)
  return [value] * batch


class Pipeline:
  """Samples a UnityDiT: text -> RGB (+ modality), control and estimation (module docstring).

  Args:
    config: the run's ConfigDict (model, codec, data, objective, mesh).
    params: model parameters (a pytree like model.init_params(config, ...)).
    mesh: device mesh (default: config.mesh over all local devices, or pure data parallelism
      when that does not fit).
    shift: timestep shift of the sampling schedule (default config.objective.shift).
  """

  def __init__(self, config, params, *, mesh=None, shift: float | None = None):
    self.config = config
    self.model = model_lib.build_model(config)
    self.codec = codec_lib.make_codec(config)
    # model.text_encoder="precomputed": prompts are embedded here by the hook precompute used
    # (config.text: umT5 from encoder_dir/tokenizer_path, or fake), so a sample conditions on
    # the same embeddings training read from the store.
    self.text = (text_embedder.PromptEmbedder(config)
                 if config.model.text_encoder == "precomputed" else None)
    self.mesh = _sampling_mesh(config) if mesh is None else mesh
    self.rules = rules_lib.rules_for(config.mesh.rules)
    shardings = mesh_lib.logical_to_sharding(model_lib.logical_param_axes(config), self.mesh,
                                             config)
    self.params = jax.device_put(params, shardings)
    self.shift = float(config.objective.shift if shift is None else shift)
    d = config.data
    self.video_shape = (int(d.num_frames), int(d.height), int(d.width), 3)
    self.step, self.weights = None, None   # set by from_workdir
    self.trace_counts = {}   # (spec, padded batch, num_steps) -> traces of that jitted loop
    self._samplers = {}

  # --- construction from a training run -----------------------------------------------------

  @classmethod
  def from_workdir(cls, workdir: str, weights: str = "ema", step: int | None = None, *,
                   mesh=None, shift: float | None = None) -> "Pipeline":
    """Loads a unity-train workdir: its checkpoint `step` (default latest), EMA or raw weights.

    Restores only those weights (Checkpointer.restore_params: orbax partial restore, no
    optimizer state) from <workdir>/checkpoints/<step>, with the config saved there.
    """
    from unity_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    from unity_jax.train import optim  # pylint: disable=g-import-not-at-top
    from unity_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
    if weights not in WEIGHTS:
      raise ValueError(f"weights={weights!r}; expected one of {list(WEIGHTS)}")
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"workdir {workdir!r} does not exist")
    directory = checkpoint_lib.checkpoint_dir(workdir)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints: {directory} does not "
                              "exist (train first: unity-train --config ... --workdir "
                              f"{workdir})")
    checkpointer = checkpoint_lib.Checkpointer(directory, keep=1 << 30, async_save=False)
    try:
      available = checkpointer.all_steps()
      if not available:
        raise FileNotFoundError(f"workdir {workdir!r} has no finished checkpoint in {directory}")
      step = checkpointer.latest_step() if step is None else int(step)
      if step not in available:
        raise ValueError(f"{directory} has no checkpoint at step {step}; available steps: "
                         f"{sorted(available)}")
      config = config_from_json(checkpointer.read_config(step))
      mesh = _sampling_mesh(config) if mesh is None else mesh
      optimizer = optim.make_optimizer(config, state_lib.abstract_params(config))
      abstract, _ = state_lib.abstract_state(config, mesh, optimizer)
      # Only the weights asked for: a third of the state's bytes (no Adam moments, one copy).
      field = "ema_params" if weights == "ema" else "params"
      params = checkpointer.restore_params(step, getattr(abstract, field), field)
    finally:
      checkpointer.close()
    pipe = cls(config, params, mesh=mesh, shift=shift)
    pipe.step, pipe.weights = step, weights
    return pipe

  # --- public tasks -------------------------------------------------------------------------

  def generate(self, prompt, modality: str | None = None, *, num_steps: int = 50,
               guidance_scale: float = 7.5, seed=0, solver: str = "euler", targets=None):
    """Text -> RGB video, jointly with `modality` when given (both streams denoised).

    prompt: str (returns one SampleOutput) or list of str (returns a list).
    targets: segmentation targets for the modality prompt ("two persons"); str or list.
    """
    captions, single = ([prompt], True) if isinstance(prompt, str) else (list(prompt), False)
    task = "rgb" if modality is None else "joint"
    outputs = self._sample(task, captions, modality, targets, seed, num_steps, solver,
                           guidance_scale, 1.0)
    return outputs[0] if single else outputs

  def control(self, condition, modality: str, prompt="", *, num_steps: int = 50,
              guidance_scale: float = 7.5, condition_scale: float = 1.0, seed=0,
              solver: str = "euler", targets=None):
    """Modality video (+ text) -> RGB video; the condition stream stays exactly as given.

    condition: uint8 [T, H, W, 3] (or [B, T, H, W, 3]) rendered modality video.
    condition_scale: guidance on the condition stream (uncond = stream dropped); 1 = off.
    """
    return self._from_video("control", condition, modality, prompt, targets, seed, num_steps,
                            solver, guidance_scale, condition_scale)

  def estimate(self, video, modality: str, prompt="", *, num_steps: int = 50,
               guidance_scale: float = 1.0, seed=0, solver: str = "euler", targets=None):
    """RGB video -> modality video (+ decoded values); the RGB stream stays exactly as given.

    video: uint8 [T, H, W, 3] (or [B, T, H, W, 3]). Caption guidance acts only with a prompt.
    """
    return self._from_video("estimate", video, modality, prompt, targets, seed, num_steps,
                            solver, guidance_scale, 1.0)

  # --- internals ----------------------------------------------------------------------------

  def check_video(self, video, name: str) -> np.ndarray:
    """uint8 [B, T, H, W, 3] from a [T, H, W, 3] or batched video of the configured size."""
    video = np.asarray(video)
    if video.dtype != np.uint8:
      raise ValueError(f"{name}: expected uint8 [T, H, W, 3] with values 0..255, got dtype "
                       f"{video.dtype}")
    batched = video if video.ndim == 5 else video[None]
    if batched.ndim != 5 or batched.shape[1:] != self.video_shape:
      t, h, w, _ = self.video_shape
      raise ValueError(
          f"{name}: got shape {video.shape}, but this model samples [T, H, W, 3] = "
          f"{list(self.video_shape)} (config data.num_frames={t}, data.height={h}, "
          f"data.width={w}); resample the video to {t} frames of {h}x{w} (or pass a batch "
          f"[B, {t}, {h}, {w}, 3])")
    return batched

  def _from_video(self, task, video, modality, prompt, targets, seed, num_steps, solver,
                  guidance_scale, condition_scale):
    constants.modality_id(modality)
    name = "condition" if task == "control" else "video"
    videos = self.check_video(video, name)
    single = np.asarray(video).ndim == 4 and isinstance(prompt, str)
    batch = max(len(videos), 1 if isinstance(prompt, str) else len(prompt))
    if len(videos) not in (1, batch):
      raise ValueError(f"{name}: {len(videos)} videos for {batch} prompts")
    videos = np.broadcast_to(videos, (batch, *videos.shape[1:]))
    captions = _as_list(prompt, batch, "prompt")
    outputs = self._sample(task, captions, modality, targets, seed, num_steps, solver,
                           guidance_scale, condition_scale, videos=videos)
    return outputs[0] if single else outputs

  def _noise(self, seeds: Sequence[int], latent_shape) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample standard normal noise (rgb, modality), each float32 [B, F, H, W, C]."""
    rgb, modality = [], []
    for s in seeds:
      key_rgb, key_modality = jax.random.split(jax.random.key(int(s)))
      rgb.append(jax.random.normal(key_rgb, latent_shape, jnp.float32))
      modality.append(jax.random.normal(key_modality, latent_shape, jnp.float32))
    return np.stack(rgb), np.stack(modality)

  def prepare_inputs(self, task: str, captions: Sequence[str], modality: str | None = None, *,
                     seed=0, targets=None, videos=None) -> tuple[dict, list[int]]:
    """Host inputs of denoise.make_sample_fn for one batch, and the per-sample seeds.

    task: one of denoise.TASKS; captions: B strings; videos: uint8 [B, T, H, W, 3], the
    condition (control) or the RGB clip (estimate). Noise of sample i comes from seed + i
    (or seed[i] for a list).
    """
    if not captions:
      raise ValueError("prompt: need at least one prompt")
    if task != "rgb":
      constants.modality_id(modality)  # Clear error for an unknown name.
    batch = len(captions)
    seeds = ([int(s) for s in _as_list(seed, batch, "seed")] if isinstance(seed, (list, tuple))
             else [int(seed) + i for i in range(batch)])
    d = self.config.data
    noise_rgb, noise_modality = self._noise(seeds, model_lib.latent_grid(self.config))
    clean = None if videos is None else np.asarray(self.codec.encode(videos), np.float32)
    inputs = {"rgb": clean if task == "estimate" else noise_rgb}
    target_list = _as_list(targets, batch, "targets")
    if self.text is not None:
      inputs["caption"] = self.text.captions(captions)
      inputs["empty_caption"] = self.text.captions([""] * batch)
    else:
      _warn_if_truncated(captions, d.caption_len, "caption", "data.caption_len")
      tokens, mask = text_lib.tokenize(captions, d.caption_len)
      empty_tokens, empty_mask = text_lib.tokenize([""] * batch, d.caption_len)
      inputs["caption"] = {"tokens": tokens, "mask": mask}
      inputs["empty_caption"] = {"tokens": empty_tokens, "mask": empty_mask}
    if task != "rgb":
      stream = clean if task == "control" else noise_modality
      if self.text is not None:
        prompt = self.text.prompts(modality, target_list)
      else:
        texts = [prompts_lib.modality_prompt(modality, t) for t in target_list]
        _warn_if_truncated(texts, d.prompt_len, "modality prompt", "data.prompt_len")
        prompt_tokens, prompt_mask = text_lib.tokenize(texts, d.prompt_len)
        prompt = {"tokens": prompt_tokens, "mask": prompt_mask}
      inputs.update(modality=stream[:, None],
                    modality_id=np.full((batch, 1), constants.modality_id(modality), np.int32),
                    prompt=jax.tree.map(lambda x: x[:, None], prompt))
    return inputs, seeds

  def _sample(self, task, captions, modality, targets, seed, num_steps, solver, guidance_scale,
              condition_scale, videos=None):
    samplers.check_solver(solver)
    if int(num_steps) != num_steps or num_steps < 1:
      raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    inputs, seeds = self.prepare_inputs(task, captions, modality, seed=seed, targets=targets,
                                        videos=videos)
    spec = denoise.SamplerSpec(
        task=task, solver=solver,
        # An all-empty caption equals the unconditional one: guidance would change nothing.
        text_guidance=float(guidance_scale) != 1.0 and any(captions),
        condition_guidance=task == "control" and float(condition_scale) != 1.0,
        shared_timesteps=self.config.objective.timesteps == "shared")
    rgb, modality_latents = self.sample_latents(spec, inputs, num_steps, guidance_scale,
                                                condition_scale)
    return self._outputs(task, captions, modality, seeds, rgb, modality_latents, videos)

  def sample_latents(self, spec: denoise.SamplerSpec, inputs: dict, num_steps: int,
                     guidance_scale: float = 1.0, condition_scale: float = 1.0):
    """Runs the jitted loop on host `inputs` (denoise.make_sample_fn); returns numpy latents.

    The batch is padded to the data-parallel size and sharded; one jitted sampler is cached
    per (spec, padded batch, num_steps) key, and `trace_counts[key]` counts its traces (1 when
    nothing retraces: the guidance scales, seeds and prompts are traced values).
    """
    batch = inputs["rgb"].shape[0]
    parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    padded = -(-batch // parallel) * parallel
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], padded - batch, axis=0)])
    inputs = jax.tree.map(lambda x: pad(np.asarray(x)), inputs)
    key = (spec, padded, int(num_steps))
    if key not in self._samplers:
      sample = denoise.make_sample_fn(self.model, spec, self.rules)

      def counted(*args, key=key, sample=sample):
        self.trace_counts[key] = self.trace_counts.get(key, 0) + 1
        return sample(*args)
      self._samplers[key] = jax.jit(counted, compiler_options=xla_options.for_mesh(self.mesh))
    with jax.set_mesh(self.mesh):
      rgb, modality = self._samplers[key](
          self.params, mesh_lib.shard_batch(inputs, self.mesh),
          schedules.sampling_schedule(int(num_steps), self.shift),
          jnp.float32(guidance_scale), jnp.float32(condition_scale))
    rgb = np.asarray(jax.device_get(rgb))[:batch]
    modality = None if modality is None else np.asarray(jax.device_get(modality))[:batch]
    return rgb, modality

  def _outputs(self, task, captions, modality, seeds, rgb, modality_latents, videos):
    to_video = lambda latents: self.codec.to_uint8(self.codec.decode(latents))
    rgb_videos = videos if task == "estimate" else to_video(rgb)
    generated_modality = task in ("joint", "estimate")
    if generated_modality:
      modality_videos = to_video(modality_latents[:, 0])
    elif task == "control":
      modality_videos = videos
    else:
      modality_videos = [None] * len(captions)
    outputs = []
    for i, caption in enumerate(captions):
      values = (modality_render.decode_modality(modality, modality_videos[i])
                if generated_modality else None)
      outputs.append(SampleOutput(task=task, prompt=caption, modality_name=modality,
                                  seed=seeds[i], rgb=np.asarray(rgb_videos[i]),
                                  modality=(None if modality_videos[i] is None
                                            else np.asarray(modality_videos[i])),
                                  values=values))
    return outputs
