"""Training batch sources: process-local pipeline batches for one curriculum stage.

`train.data_source="auto"` (the default) picks OpenUniSource when `data.dir` is set and
RandomSource otherwise. Two sources share one small interface (`next_batch(step)`,
`checkpoint_args()`, `restore_args()`, `close()`):
- RandomSource (train.data_source="random"): in-memory synthetic clips. Sample i of the global
  batch at `step` is drawn from seed (config.seed, stage, step, i), so the data needs no state
  beyond the step and a process's share is the same whatever the process count. Sources,
  modalities and tasks follow the stage (balanced source groups, stage modality weights and
  task probabilities).
- OpenUniSource (train.data_source="openuni"): the grain pipeline over config.data.dir; its
  iterator state is saved in every checkpoint (grain.checkpoint.CheckpointSave).
"""

import numpy as np

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import prompts
from unity_jax.flow import batch as batch_lib
from unity_jax.model import text as text_lib
from unity_jax.train import step as step_lib


def local_batch_size(config, process_count: int) -> int:
  """train.batch_size / process_count, with a clear error when it does not divide."""
  batch = int(config.train.batch_size)
  if batch % process_count:
    raise ValueError(f"config.train.batch_size={batch} must be divisible by the process count "
                     f"{process_count}")
  return batch // process_count


def batch_shapes(config, batch_size: int) -> dict:
  """{name: (shape, dtype)} of a pipeline batch (flow/batch.py contract) of `batch_size`."""
  d = config.data
  video = ((batch_size, d.num_frames, d.height, d.width, 3), np.uint8)
  ids = ((batch_size,), np.int32)
  shapes = dict(rgb=video, modality_video=video, modality_id=ids, source_id=ids, task_id=ids,
                caption_tokens=((batch_size, d.caption_len), np.int32),
                caption_mask=((batch_size, d.caption_len), np.bool_),
                modality_prompt_tokens=((batch_size, d.prompt_len), np.int32),
                modality_prompt_mask=((batch_size, d.prompt_len), np.bool_))
  if d.get("precomputed"):  # latent_examples.py: latents (+ embeddings) replace videos (+ ids).
    from unity_jax.data import latent_examples  # pylint: disable=g-import-not-at-top
    dtype = latent_examples.stored_dtype(config)
    latent = ((batch_size, *latent_examples.latent_shape(config)), dtype)
    del shapes["rgb"], shapes["modality_video"]
    shapes.update(rgb_latents=latent, modality_latents=latent)
    if config.model.text_encoder == "precomputed":
      del shapes["caption_tokens"], shapes["modality_prompt_tokens"]
      shapes.update(
          caption_embedding=((batch_size, d.caption_len, config.model.text_dim), dtype),
          modality_prompt_embedding=((batch_size, d.prompt_len, config.model.text_dim), dtype))
  if config.train.debug_nan_steps:
    shapes[step_lib.NAN_INJECTION_KEY] = ((batch_size,), np.float32)
  return shapes


def _sample_seed(*numbers: int) -> int:
  return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class RandomSource:
  """Stateless synthetic batches (see the module docstring)."""

  def __init__(self, config, stage_index: int, *, process_index: int = 0,
               process_count: int = 1):
    self._config = config
    self._stage_index = stage_index
    self._stage = config.stages[stage_index]
    self._local = local_batch_size(config, process_count)
    self._offset = process_index * self._local
    weights = np.asarray(self._stage.modality_weights, np.float64)
    self._modality_probs = weights / weights.sum()
    probs = np.asarray([self._stage.task_probs[t] for t in constants.TASKS], np.float64)
    self._task_probs = probs / probs.sum()

  def next_batch(self, step: int) -> dict:
    """The process-local pipeline batch (flow/batch.py contract) for global `step`."""
    samples = [self._sample(step, self._offset + i) for i in range(self._local)]
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}

  def _sample(self, step: int, index: int) -> dict:
    config, stage = self._config, self._stage
    seed = _sample_seed(config.seed, self._stage_index, step, index)
    sample = batch_lib.random_pipeline_batch(config, 1, seed)
    rng = np.random.default_rng(seed)
    modality = stage.modalities[rng.choice(len(stage.modalities), p=self._modality_probs)]
    # Balanced source groups: the global batch is split into len(sources) equal parts.
    group = index * len(stage.sources) // int(config.train.batch_size)
    tokens, mask = text_lib.tokenize([prompts.modality_prompt(modality)],
                                     config.data.prompt_len)
    sample.update(
        modality_id=np.asarray([constants.modality_id(modality)], np.int32),
        source_id=np.asarray([constants.source_id(stage.sources[group])], np.int32),
        task_id=np.asarray([rng.choice(len(constants.TASKS), p=self._task_probs)], np.int32),
        modality_prompt_tokens=tokens, modality_prompt_mask=mask)
    return sample

  def checkpoint_args(self):
    return None

  def restore_args(self):
    return None

  def close(self):
    pass


class OpenUniSource:
  """The grain pipeline of one stage; its iterator position travels in checkpoints."""

  def __init__(self, config, stage_index: int, *, process_index: int = 0,
               process_count: int = 1):
    from unity_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    local_batch_size(config, process_count)
    self._iterator = pipeline.make_train_iterator(
        config, stage_index, process_index=process_index, process_count=process_count)

  def next_batch(self, step: int) -> dict:
    del step  # The iterator's own position (restored from checkpoints) decides the batch.
    return next(self._iterator)

  def checkpoint_args(self):
    import grain  # pylint: disable=g-import-not-at-top
    return grain.checkpoint.CheckpointSave(self._iterator)

  def restore_args(self):
    import grain  # pylint: disable=g-import-not-at-top
    return grain.checkpoint.CheckpointRestore(self._iterator)

  def close(self):
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


SOURCES = {"random": RandomSource, "openuni": OpenUniSource}


def make_source(config, stage_index: int, *, process_index: int = 0, process_count: int = 1):
  """The source named by config.train.data_source for curriculum stage `stage_index`."""
  source_cls = SOURCES[config_lib.resolved_data_source(config)]
  return source_cls(config, stage_index, process_index=process_index,
                    process_count=process_count)


def with_debug_nan(config, batch: dict, step: int) -> dict:
  """Adds the NaN-injection entry when train.debug_nan_steps is set (tests of the policy)."""
  if not config.train.debug_nan_steps:
    return batch
  size = batch["task_id"].shape[0]
  value = np.nan if step in tuple(config.train.debug_nan_steps) else 0.0
  return {**batch, step_lib.NAN_INJECTION_KEY: np.full((size,), value, np.float32)}
