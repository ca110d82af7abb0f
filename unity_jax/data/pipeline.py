"""grain input pipeline: exactly source-balanced, deterministic, checkpointable training batches.

Shape of the pipeline (per process; decisions in `sampling.py`, per-sample work in `examples.py`):

  for each source of the stage (constants.SOURCES order):
    index rows --curriculum filter--> kept record ids --[process_index::process_count]-->
    EpochOrder(ids, seed_s)                     # stream position -> record, new order per epoch
    grain.MapDataset.range(inf).map(ExampleBuilder)     # decode, validate, draw, tokenize
  grain.MapDataset.mix(per_source, source_weights).batch(local_batch)
    .to_iter_dataset(ReadOptions)  [.mp_prefetch(workers)]  -> BatchIterator

Why this order: mixing integer-weighted *MapDatasets* places exactly local_batch * w / sum(w)
samples of each source in every batch window (grain's mix interleaves by exact index
arithmetic), and batching before `mp_prefetch` makes every worker produce whole batches.
Shuffling after the mix, or batching inside `grain.DataLoader` workers, breaks this balance.
Every process uses the same counts, so each global batch holds batch * w / sum(w) per source.

Batch contract (numpy, process-local batch B = train.batch_size / process_count):
  rgb                     uint8 [B, T, H, W, 3]
  modality_video          uint8 [B, T, H, W, 3]   zeros where modality_id == -1
  modality_id             int32 [B]   index into constants.MODALITIES, -1 = RGB-only
  source_id               int32 [B]   index into constants.SOURCES
  task_id                 int32 [B]   index into constants.TASKS
  caption_tokens          int32 [B, Lc];  caption_mask bool [B, Lc]
  modality_prompt_tokens  int32 [B, Lm];  modality_prompt_mask bool [B, Lm]
Texts longer than Lc / Lm (data.caption_len / prompt_len) are truncated, counted by the
iterator (truncated_captions, truncated_prompts) and logged, never silently.
With config.data.precomputed (latent_examples.py; same clips, order and draws) videos are
replaced by stored latents, and with model.text_encoder="precomputed" token ids by embeddings:
  rgb_latents, modality_latents  float [B, F', H', W', C]  (precompute.dtype; modality zeros
                                 where modality_id == -1)
  caption_embedding [B, Lc, D]; modality_prompt_embedding [B, Lm, D]  (masks from lengths)

Checkpointing the iterator with the train state (orbax):
  it = make_train_iterator(config, stage_index, process_index=jax.process_index(),
                           process_count=jax.process_count())
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)))
  # Resume: build the iterator of the checkpoint's stage the same way, then
  manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(it)))
`it.get_state()` / `it.set_state(state)` give the same without orbax (a JSON-able dict).
"""

import logging
import sys
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from unity_jax import constants
from unity_jax.data import examples
from unity_jax.data import sampling

RandomAccessSource = Any
"""len() and __getitem__(int) -> raw record bytes (grain RandomAccessDataSource compatible)."""


def ensure_absl_flags_parsed() -> None:
  """grain reads absl flags; under jax they must count as parsed or workers fail to start."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  ensure_absl_flags_parsed()


def build_batch_dataset(
    sources: Mapping[str, RandomAccessSource],
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    plan: sampling.StagePlan,
    options: examples.ExampleOptions,
    global_batch: int,
    seed: int,
    stage_index: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    decode_fn: Callable[[bytes, str], dict] | None = None,
    builder: Callable[..., examples.ExampleBuilder] = examples.ExampleBuilder,
) -> grain.MapDataset:
  """The process-local, infinite MapDataset of training batches (see the module docstring).

  Args:
    sources: {source name: random-access raw records} for at least every source of `plan`.
    rows: {source name: index rows}, row j describing record j of that source.
    plan: the stage's sampling plan (sampling.plan_from_config).
    options: shapes, text lengths and augmentation (examples.options_from_config).
    global_batch: train.batch_size over all processes.
    seed: config.seed.
    stage_index: curriculum stage (seeds the shuffles and draws).
    process_index, process_count: this process's disjoint share of every source.
    decode_fn: raw bytes, where -> clip dict; defaults to the OpenUni reader's decode_record.
    builder: the per-source map class (ExampleBuilder's fields); the latent path passes
      latent_examples.builder_factory(...), which only changes what is loaded per record.

  Returns:
    grain.MapDataset of batches (dicts of numpy arrays, see the contract); index i is the i-th
    local batch, so len() is effectively infinite (sys.maxsize // local batch).
  """
  if decode_fn is None:
    decode_fn = examples.default_decode_fn()
  counts = sampling.per_batch_counts(plan, global_batch, process_count)
  modality_weights = sampling.allowed_modality_weights(plan)
  per_source = []
  for source in plan.sources:
    if source not in sources or source not in rows:
      raise ValueError(f"stage {plan.name!r} samples source {source!r} but no records were "
                       f"given for it (have {sorted(sources)})")
    source_rows = rows[source]
    if len(source_rows) != len(sources[source]):
      raise ValueError(f"source {source!r}: the index has {len(source_rows)} rows but the "
                       f"record source holds {len(sources[source])} records")
    kept = sampling.select_records(source_rows, plan)
    where = f"stage {plan.name!r} source {source!r}"
    local = sampling.shard_for_process(kept, process_index, process_count, where)
    order = sampling.EpochOrder(local, sampling.shuffle_seed(seed, stage_index, source))
    source_builder = builder(
        source=source, records=sources[source], order=order,
        available=sampling.availability_matrix(source_rows), modality_weights=modality_weights,
        task_probs=np.asarray(plan.task_probs), seed=seed, stage_index=stage_index,
        options=options, decode_fn=decode_fn)
    # Position k of the infinite per-source stream (epoch k // len(local)).
    per_source.append(grain.MapDataset.range(sys.maxsize).map(source_builder))
  weights = [counts[s] for s in plan.sources]
  mixed = grain.MapDataset.mix(per_source, weights) if len(per_source) > 1 else per_source[0]
  return mixed.batch(sum(weights), drop_remainder=True)


class BatchIterator(grain.DatasetIterator):
  """The training iterator: yields contract batches and counts skipped corrupt records.

  Its state is {"next_batch": n, "skipped_corrupt": k, "truncated_captions": c,
  "truncated_prompts": p}: the batch dataset is a pure function
  of the batch index, so n alone resumes it exactly, whatever the worker count before and after
  (grain's own prefetch states differ between in-process and mp_prefetch iterators). It is a
  grain DatasetIterator, so `grain.checkpoint.CheckpointSave/CheckpointRestore` accept it.
  Decoding starts at the first `next` (or `start_prefetch`), so `set_state` right after
  construction never starts workers twice.

  Attributes:
    skipped_corrupt: corrupt records skipped so far (only with data.skip_corrupt).
    truncated_captions, truncated_prompts: samples so far whose caption / modality prompt was
      longer than data.caption_len / prompt_len tokens and was cut; the first batch with any
      logs a warning (they are also in the state, and `unity-data inspect` prints them).
  """

  def __init__(self, batches: grain.MapDataset, *, worker_count: int = 0,
               prefetch_buffer: int = 2):
    super().__init__()
    if worker_count < 0 or prefetch_buffer < 0:
      raise ValueError(f"worker_count={worker_count} and prefetch_buffer={prefetch_buffer} "
                       f"must be >= 0")
    self._batches = batches
    self._worker_count = worker_count
    self._prefetch_buffer = prefetch_buffer
    self._stream: grain.DatasetIterator | None = None
    self._next_batch = 0
    self.skipped_corrupt = 0
    self.truncated_captions = 0
    self.truncated_prompts = 0

  def _start(self) -> None:
    ensure_absl_flags_parsed()
    read_options = grain.ReadOptions(num_threads=min(self._prefetch_buffer, 2),
                                     prefetch_buffer_size=self._prefetch_buffer)
    stream = self._batches[self._next_batch:].to_iter_dataset(read_options)
    if self._worker_count > 0:
      stream = stream.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self._worker_count,
                                       per_worker_buffer_size=max(1, self._prefetch_buffer)),
          worker_init_fn=_worker_init)
    self._stream = iter(stream)

  def _stop(self) -> None:
    if self._stream is not None:
      self._stream.close()
      self._stream = None

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._stream is None:
      self._start()
    batch = dict(next(self._stream))
    self._next_batch += 1
    self.skipped_corrupt += int(np.sum(batch.pop(examples.SKIPPED_KEY)))
    captions, prompts = np.sum(batch.pop(examples.TRUNCATED_KEY), axis=0).tolist()
    if (captions or prompts) and not (self.truncated_captions or self.truncated_prompts):
      logging.warning(
          "unity_jax input pipeline: batch %d has %d caption(s) longer than data.caption_len and "
          "%d modality prompt(s) longer than data.prompt_len; they are truncated (run "
          "`unity-data inspect` for the token lengths of the data)", self._next_batch - 1,
          captions, prompts)
    self.truncated_captions += int(captions)
    self.truncated_prompts += int(prompts)
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": self._next_batch, "skipped_corrupt": self.skipped_corrupt,
            "truncated_captions": self.truncated_captions,
            "truncated_prompts": self.truncated_prompts}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._stop()
    self._next_batch = int(state["next_batch"])
    self.skipped_corrupt = int(state["skipped_corrupt"])
    # Absent from states saved before truncation was counted.
    self.truncated_captions = int(state.get("truncated_captions", 0))
    self.truncated_prompts = int(state.get("truncated_prompts", 0))

  def start_prefetch(self) -> None:
    if self._stream is None:
      self._start()
    self._stream.start_prefetch()

  def close(self) -> None:
    self._stop()
    super().close()

  def __str__(self) -> str:
    return (f"unity_jax.BatchIterator(next_batch={self._next_batch}, "
            f"workers={self._worker_count})")


def make_iterator(batches: grain.MapDataset, *, worker_count: int = 0,
                  prefetch_buffer: int = 2) -> BatchIterator:
  """Turns the batch MapDataset into a prefetching, checkpointable iterator.

  worker_count 0 decodes in this process (prefetch threads); > 0 decodes whole batches in that
  many spawned processes (`mp_prefetch`), which preserves order and balance. Call
  `iterator.close()` when done to stop worker processes. Scripts using workers need an
  `if __name__ == "__main__":` guard (workers are spawned).
  """
  return BatchIterator(batches, worker_count=worker_count, prefetch_buffer=prefetch_buffer)


def check_geometry(reader: Any, config: Any, split: str = "train",
                   config_spec: str | None = None) -> None:
  """Raises ValueError, saying which command fixes it, when the split's clips (manifest array
  shapes) are not config.data's num_frames x height x width.

  Checked before any record is decoded, so a mismatch fails at once instead of in a worker.
  `config_spec` ("configs/NAME.py[:ARGS]") names the config in the suggested command.
  """
  expected = examples.options_from_config(config).video_shape
  shapes = reader.split_entry(split).get("arrays", {}).get("rgb", {}).get("shapes", {})
  wrong = sorted(s for s in shapes if s != "x".join(map(str, expected)))
  if wrong:
    have = ", ".join(f"{shapes[s]} clips of {s}" for s in wrong)
    raise ValueError(
        f"the OpenUni data at {config.data.dir!r} (split {split!r}) holds {have} (frames x "
        f"height x width x 3), but the config expects {'x'.join(map(str, expected))} "
        f"(config.data.num_frames, height, width): "
        + examples.geometry_fix_hint(expected, config.data.dir or "DIR", config_spec))


def pipeline_from_reader(reader: Any, config: Any, stage_index: int, *, process_index: int = 0,
                         process_count: int = 1, split: str = "train") -> grain.MapDataset:
  """build_batch_dataset over an `OpenUniReader`'s split, configured by `config`."""
  if split not in reader.splits:
    raise ValueError(f"split {split!r} not in the OpenUni data at {config.data.dir!r}; it has "
                     f"{list(reader.splits)}")
  check_geometry(reader, config, split)
  plan = sampling.plan_from_config(config, stage_index)
  rows = sampling.rows_by_source(reader.index(split))
  sources = {source: reader.source(split, source, decode=False) for source in plan.sources}
  # Bound by the manifest's declared shapes: a lying record cannot inflate past them.
  decode_fn, builder = reader.decode_fn(split, examples.TRAINING_SKIP), examples.ExampleBuilder
  if config.data.get("precomputed"):  # (Hand-built configs may lack the key.)
    from unity_jax.data import latent_examples  # pylint: disable=g-import-not-at-top
    store = latent_examples.open_for_training(config, config.data.dir, split)
    decode_fn = reader.decode_fn(split, latent_examples.HEADER_ONLY)
    builder = latent_examples.builder_factory(config, store, rows)
  return build_batch_dataset(
      sources, rows, plan=plan, options=examples.options_from_config(config),
      global_batch=int(config.train.batch_size), seed=int(config.seed), stage_index=stage_index,
      process_index=process_index, process_count=process_count, decode_fn=decode_fn,
      builder=builder)


def make_train_iterator(config: Any, stage_index: int, *, process_index: int = 0,
                        process_count: int = 1, split: str = "train") -> BatchIterator:
  """The infinite training iterator of one curriculum stage (process-local batches).

  Reads config.data.dir with OpenUniReader; worker_count and prefetch_buffer from config.data.
  On a multi-host job pass jax.process_index() and jax.process_count().
  """
  from unity_jax.data import reader as reader_lib  # pylint: disable=g-import-not-at-top
  batches = pipeline_from_reader(
      reader_lib.OpenUniReader(config.data.dir), config, stage_index,
      process_index=process_index, process_count=process_count, split=split)
  return make_iterator(batches, worker_count=int(config.data.worker_count),
                       prefetch_buffer=int(config.data.prefetch_buffer))


def batch_counts(batch: Mapping[str, np.ndarray]) -> dict[str, dict[str, int]]:
  """Per-batch counts by source, modality ("none" for -1) and task names (for inspect/logs).

  Tasks are constants.LOSS_TASKS, as in the training metrics: RGB-only samples count as "t2v"
  whatever their routing task id.
  """
  modality_names = (*constants.MODALITIES, "none")
  modality_ids = np.where(batch["modality_id"] < 0, len(constants.MODALITIES),
                          batch["modality_id"])
  task_ids = np.where(batch["modality_id"] < 0, constants.LOSS_TASKS.index(constants.T2V),
                      batch["task_id"])
  def count(ids, names):
    values = np.bincount(np.asarray(ids), minlength=len(names))
    return {name: int(v) for name, v in zip(names, values)}
  return {"source": count(batch["source_id"], constants.SOURCES),
          "modality": count(modality_ids, modality_names),
          "task": count(task_ids, constants.LOSS_TASKS)}
