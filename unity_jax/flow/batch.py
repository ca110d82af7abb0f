"""From pipeline batches (uint8 videos + token ids) to the latent batches the objective uses.

Pipeline batch contract (numpy, see unity_jax/data/pipeline.py):
  rgb, modality_video: uint8 [B, T, H, W, 3]; modality_id, source_id, task_id: int32 [B];
  caption_tokens: int32 [B, Lc], caption_mask: bool [B, Lc];
  modality_prompt_tokens: int32 [B, Lm], modality_prompt_mask: bool [B, Lm].
Precomputed pipeline batches (config.data.precomputed) carry instead of the videos
  rgb_latents, modality_latents: float [B, F', H', W', C] (stored dtype),
and with model.text_encoder="precomputed" instead of the token ids
  caption_embedding: [B, Lc, D]; modality_prompt_embedding: [B, Lm, D] (same masks).
Latent batch: rgb [B, F', H', W', C]; modality [B, 1, F', H', W', C]; modality_id [B, 1];
  task_id [B]; caption {"tokens"|"embedding", "mask"};
  prompt {"tokens": [B, 1, Lm] | "embedding": [B, 1, Lm, D], "mask"}.
"""

import numpy as np

from unity_jax import constants
from unity_jax.data import prompts
from unity_jax.model import text as text_lib

PIPELINE_KEYS = ("rgb", "modality_video", "modality_id", "source_id", "task_id",
                 "caption_tokens", "caption_mask", "modality_prompt_tokens",
                 "modality_prompt_mask")


def to_latent_batch(batch: dict, codec) -> dict:
  """Encodes videos with `codec` (traceable under jit) and nests text fields.

  RGB and modality videos go through the codec as one batch of 2B clips: a VAE codec then
  appears once in the compiled step instead of twice (half the compile time). Precomputed
  latents pass through without the codec (cast to float32, the codecs' output dtype).
  """
  if "rgb_latents" in batch:
    rgb = batch["rgb_latents"].astype(np.float32)
    modality = batch["modality_latents"].astype(np.float32)
  else:
    size = batch["rgb"].shape[0]
    latents = codec.encode(_concatenate([batch["rgb"], batch["modality_video"]]))
    rgb, modality = latents[:size], latents[size:]
  text = "embedding" if "caption_embedding" in batch else "tokens"
  return dict(
      rgb=rgb,
      modality=modality[:, None],
      modality_id=batch["modality_id"][:, None],
      task_id=batch["task_id"],
      source_id=batch["source_id"],
      caption={text: batch[f"caption_{text}"], "mask": batch["caption_mask"]},
      prompt={text: batch[f"modality_prompt_{text}"][:, None],
              "mask": batch["modality_prompt_mask"][:, None]})


def _concatenate(arrays):
  """np.concatenate for numpy inputs (the host path stays numpy), jnp otherwise."""
  if all(isinstance(a, np.ndarray) for a in arrays):
    return np.concatenate(arrays)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.concatenate(arrays)


def random_pipeline_batch(config, batch_size: int, seed: int, *, rgb_only_fraction=0.0):
  """A batch in the pipeline contract from smooth random videos (tests, benchmarks, smoke).

  The modality video is a deterministic function of the RGB video (its channel-reversed,
  brightness-inverted copy), so estimation is learnable and losses can fall.
  """
  rng = np.random.default_rng(seed)
  d = config.data
  shape = (batch_size, d.num_frames, d.height, d.width, 3)
  coarse = rng.uniform(0, 255, (batch_size, d.num_frames, 4, 4, 3))
  rgb = coarse.repeat(d.height // 4, axis=2).repeat(d.width // 4, axis=3)[:, :, :d.height, :d.width]
  rgb = np.broadcast_to(rgb, shape).astype(np.uint8)
  modality_video = (255 - rgb[..., ::-1]).astype(np.uint8)
  modality_id = rng.integers(0, len(constants.MODALITIES), batch_size).astype(np.int32)
  modality_id[rng.uniform(size=batch_size) < rgb_only_fraction] = constants.NO_MODALITY
  modality_video[modality_id < 0] = 0
  captions = [f"clip {i} with {rng.integers(1, 4)} moving things" for i in range(batch_size)]
  prompt_texts = [prompts.modality_prompt(constants.MODALITIES[m]) if m >= 0 else ""
                  for m in modality_id]
  caption_tokens, caption_mask = text_lib.tokenize(captions, d.caption_len)
  prompt_tokens, prompt_mask = text_lib.tokenize(prompt_texts, d.prompt_len)
  return dict(
      rgb=rgb, modality_video=modality_video, modality_id=modality_id,
      source_id=(np.arange(batch_size) % len(constants.SOURCES)).astype(np.int32),
      task_id=rng.integers(0, len(constants.TASKS), batch_size).astype(np.int32),
      caption_tokens=caption_tokens, caption_mask=caption_mask,
      modality_prompt_tokens=prompt_tokens, modality_prompt_mask=prompt_mask)
