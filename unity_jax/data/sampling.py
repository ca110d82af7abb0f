"""Index-level sampling decisions of the input pipeline: curriculum filters, per-process shards,
exact per-batch source counts and the per-sample draws (modality, task, flip).

Nothing here reads video bytes: every decision is made from the OpenUni index rows
({id, source, person_count, available: {modality: bool}}) and a few integers, so it is cheap,
deterministic and testable without data. `pipeline.py` turns these decisions into grain datasets.
"""

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from unity_jax import constants

NO_MODALITY_POLICIES = ("rgb_only", "drop")
"""What happens to a record with none of the stage's modalities available.

rgb_only: it is kept and trained RGB-only (modality_id -1, zero modality video, task control).
drop:     it is removed by the curriculum filter before shuffling.
"""

RGB_ONLY_TASK = "control"
"""Task id routing RGB-only samples: RGB noised, loss on RGB tokens only (the T2V baseline).
Their losses and counts are labelled constants.T2V ("t2v"), not control."""


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """What one curriculum stage samples, resolved from the config and validated.

  Attributes:
    name: stage name (for messages).
    sources: source names in constants.SOURCES order, only those with a positive weight.
    source_weights: positive ints, one per entry of `sources`; each batch holds exactly
      batch * weight / sum(weights) samples of that source.
    modalities: modality names the stage trains.
    modality_weights: float [len(modalities)], non-negative, sum > 0.
    task_probs: float [len(constants.TASKS)] in TASKS order, sums to 1.
    max_person_count: records with more persons are dropped; None = no limit.
    no_modality: one of NO_MODALITY_POLICIES.
  """
  name: str
  sources: tuple[str, ...]
  source_weights: tuple[int, ...]
  modalities: tuple[str, ...]
  modality_weights: tuple[float, ...]
  task_probs: tuple[float, ...]
  max_person_count: int | None = None
  no_modality: str = "rgb_only"

  def __post_init__(self):
    where = f"stage {self.name!r}"
    for name in self.sources:
      constants.source_id(name)
    for name in self.modalities:
      constants.modality_id(name)
    if not self.sources:
      raise ValueError(f"{where}: no source with a positive weight; check stage.sources and "
                       f"data.source_weights")
    if len(self.source_weights) != len(self.sources) or min(self.source_weights) <= 0:
      raise ValueError(f"{where}: source_weights {self.source_weights} must be positive ints, "
                       f"one per source {self.sources}")
    if len(self.modality_weights) != len(self.modalities):
      raise ValueError(f"{where}: modality_weights {self.modality_weights} must have one entry "
                       f"per modality {self.modalities}")
    if self.modalities and (min(self.modality_weights) < 0 or sum(self.modality_weights) <= 0):
      raise ValueError(f"{where}: modality_weights {self.modality_weights} must be >= 0 with a "
                       f"positive sum")
    if (len(self.task_probs) != len(constants.TASKS) or min(self.task_probs) < 0
        or not math.isclose(sum(self.task_probs), 1.0, abs_tol=1e-6)):
      raise ValueError(f"{where}: task_probs {self.task_probs} must be {len(constants.TASKS)} "
                       f"non-negative numbers summing to 1 (order {constants.TASKS})")
    if self.no_modality not in NO_MODALITY_POLICIES:
      raise ValueError(f"{where}: no_modality={self.no_modality!r}; expected one of "
                       f"{NO_MODALITY_POLICIES}")


def plan_from_config(config: Any, stage_index: int) -> StagePlan:
  """Builds the StagePlan of `config.stages[stage_index]` (see configs/*.py for the layout).

  Reads config.data.source_weights (4 ints in constants.SOURCES order) and the stage's sources,
  modalities, modality_weights, max_person_count (negative = no limit) and task_probs.
  `config.data.no_modality` (optional, default "rgb_only") picks a NO_MODALITY_POLICIES entry.
  """
  stages = config.stages
  if not 0 <= stage_index < len(stages):
    raise ValueError(f"stage index {stage_index} out of range: config has {len(stages)} stages")
  stage = stages[stage_index]
  all_weights = tuple(config.data.source_weights)
  if len(all_weights) != len(constants.SOURCES):
    raise ValueError(f"config.data.source_weights={all_weights} must have one int per source "
                     f"{constants.SOURCES}")
  stage_sources = tuple(stage.sources)
  for name in stage_sources:
    constants.source_id(name)
  sources = tuple(s for s, w in zip(constants.SOURCES, all_weights)
                  if s in stage_sources and w > 0)
  weights = tuple(int(all_weights[constants.source_id(s)]) for s in sources)
  probs = tuple(float(stage.task_probs[name]) for name in constants.TASKS)
  total = sum(probs)
  max_persons = stage.max_person_count
  return StagePlan(
      name=str(stage.name),
      sources=sources,
      source_weights=weights,
      modalities=tuple(stage.modalities),
      modality_weights=tuple(float(w) for w in stage.modality_weights),
      task_probs=tuple(p / total for p in probs) if total > 0 else probs,
      max_person_count=None if max_persons is None or max_persons < 0 else int(max_persons),
      no_modality=str(config.data.get("no_modality", "rgb_only")),
  )


def per_batch_counts(plan: StagePlan, global_batch: int, process_count: int) -> dict[str, int]:
  """Returns {source: samples per process-local batch}, exact, or raises naming the numbers.

  Every process draws the same counts, so each global batch holds global_batch * w / sum(w)
  samples of each source.
  """
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} is not divisible by the process count "
                     f"{process_count}")
  local_batch = global_batch // process_count
  total = sum(plan.source_weights)
  if local_batch % total:
    groups = ", ".join(f"{s}:{w}" for s, w in zip(plan.sources, plan.source_weights))
    raise ValueError(
        f"stage {plan.name!r}: the process-local batch {local_batch} (train.batch_size="
        f"{global_batch} over {process_count} processes) cannot be split exactly into source "
        f"groups with weights {{{groups}}}; use a batch size divisible by "
        f"{total * process_count}")
  return {s: local_batch * w // total for s, w in zip(plan.sources, plan.source_weights)}


def rows_by_source(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
  """Groups index rows by source, keeping order: row j of a group is record j of that source."""
  grouped: dict[str, list[Mapping[str, Any]]] = {name: [] for name in constants.SOURCES}
  for row in rows:
    source = row["source"]
    if source not in grouped:
      raise ValueError(f"index row {row.get('id')!r} has unknown source {source!r}; expected "
                       f"one of {constants.SOURCES}")
    if row.get("position", len(grouped[source])) != len(grouped[source]):
      raise ValueError(f"index row {row.get('id')!r} has position {row['position']} but is row "
                       f"{len(grouped[source])} of source {source!r}: rows must be in record order")
    grouped[source].append(row)
  return grouped


def availability_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """bool [len(rows), len(constants.MODALITIES)]: modality m is available for record r.

  A row's "available" is either {name: bool} (the clip contract) or a sequence of the available
  names (OpenUniReader.index).
  """
  matrix = np.zeros((len(rows), len(constants.MODALITIES)), bool)
  for r, row in enumerate(rows):
    available = row["available"]
    names = ([n for n, present in available.items() if present]
             if isinstance(available, Mapping) else available)
    for name in names:
      matrix[r, constants.modality_id(name)] = True
  return matrix


def allowed_modality_weights(plan: StagePlan) -> np.ndarray:
  """float [len(constants.MODALITIES)]: the stage's weight per modality id, 0 if not trained."""
  weights = np.zeros(len(constants.MODALITIES), np.float64)
  for name, weight in zip(plan.modalities, plan.modality_weights):
    weights[constants.modality_id(name)] = weight
  return weights


def select_records(rows: Sequence[Mapping[str, Any]], plan: StagePlan) -> np.ndarray:
  """Applies the curriculum filters to one source's rows; returns int64 [N] kept record indices.

  Filters: person_count <= plan.max_person_count (unknown counts, -1, pass: the source group is
  the primary person filter), and (no_modality == "drop") at least one
  available modality with a positive stage weight. The source filter is applied by the caller
  (sources absent from plan.sources are not read at all).
  """
  if not rows:
    return np.zeros(0, np.int64)
  keep = np.ones(len(rows), bool)
  if plan.max_person_count is not None:
    persons = np.array([int(row["person_count"]) for row in rows])
    keep &= persons <= plan.max_person_count
  if plan.no_modality == "drop":
    usable = availability_matrix(rows) & (allowed_modality_weights(plan) > 0)
    keep &= usable.any(axis=1)
  return np.flatnonzero(keep).astype(np.int64)


def shard_for_process(indices: np.ndarray, process_index: int, process_count: int,
                      where: str = "source") -> np.ndarray:
  """Process `process_index`'s disjoint share of `indices` (strided slice, as ShardByJaxProcess)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
  shard = indices[process_index::process_count]
  if len(shard) == 0:
    raise ValueError(f"{where}: no records left for process {process_index} of {process_count} "
                     f"after the curriculum filters ({len(indices)} kept in total)")
  return shard


def shuffle_seed(seed: int, stage_index: int, source: str) -> int:
  """uint32 shuffle seed of one source in one stage."""
  sequence = np.random.SeedSequence([seed, stage_index, constants.source_id(source)])
  return int(sequence.generate_state(1)[0])


class EpochOrder:
  """Stream position -> record index: every epoch visits `records` once, in a fresh order.

  Position k lies in epoch k // len(records). The permutation of an epoch is drawn from
  (seed, epoch) and cached (a worker reads positions in increasing order, so two epochs
  suffice). Unlike grain's index_shuffle, whose cost explodes for small sets (~5 ms per index
  at 5 records), one permutation costs O(N) once per epoch.
  """

  def __init__(self, records: np.ndarray, seed: int):
    if len(records) == 0:
      raise ValueError("EpochOrder needs at least one record")
    self.records = np.asarray(records, np.int64)
    self.seed = int(seed)
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.records)

  def __getstate__(self) -> dict:
    return {"records": self.records, "seed": self.seed, "_cache": {}}

  def epoch_and_record(self, position: int) -> tuple[int, int]:
    epoch, offset = divmod(int(position), len(self.records))
    permutation = self._cache.get(epoch)
    if permutation is None:
      permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.records))
      # Replaced, not mutated, so prefetch threads never see a dict change under them.
      recent = {e: p for e, p in list(self._cache.items()) if e == epoch - 1}
      recent[epoch] = permutation
      self._cache = recent
    return epoch, int(self.records[permutation[offset]])


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
  value = (value + 0x9E3779B97F4A7C15) & _MASK64
  value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
  return value ^ (value >> 31)


def keyed_uniforms(key: Sequence[int], count: int) -> list[float]:
  """`count` uniforms in [0, 1), a pure function of the integer tuple `key` (splitmix64).

  A counter-based hash instead of np.random.default_rng(key): the same quality for a few
  draws per sample at ~5 us instead of ~100 us, which matters at thousands of clips/s.
  """
  state = 0
  for part in key:
    state = _splitmix64(state ^ (int(part) & _MASK64))
  return [(_splitmix64(state + i + 1) >> 11) / float(1 << 53) for i in range(count)]


@dataclasses.dataclass(frozen=True)
class SampleDraw:
  """Per-sample choices. modality_id is -1 for an RGB-only sample."""
  modality_id: int
  task_id: int
  flip: bool


def draw_sample(available: np.ndarray, modality_weights: np.ndarray, task_probs: Sequence[float],
                *, seed: int, stage_index: int, source: str, epoch: int,
                record_index: int) -> SampleDraw:
  """Draws (modality, task, flip) deterministically from (seed, stage, source, epoch, record).

  The same record in the same epoch always gets the same draw, whatever the process layout or
  worker count; a new epoch gives a new draw.

  Args:
    available: bool [len(constants.MODALITIES)] availability of the record.
    modality_weights: float [len(constants.MODALITIES)] stage weights (allowed_modality_weights).
    task_probs: float [len(constants.TASKS)].
  """
  u_modality, u_task, u_flip = keyed_uniforms(
      (seed, stage_index, constants.source_id(source), epoch, record_index), 3)
  weights = np.where(available, modality_weights, 0.0)
  total = weights.sum()
  if total > 0:
    cumulative = np.cumsum(weights) / total
    modality = int(min(np.searchsorted(cumulative, u_modality, side="right"),
                       len(weights) - 1))
    # Skip zero-weight entries that searchsorted may land on through rounding at the edges.
    while weights[modality] == 0:
      modality -= 1
    task = int(min(np.searchsorted(np.cumsum(task_probs), u_task, side="right"),
                   len(task_probs) - 1))
  else:
    modality = constants.NO_MODALITY
    task = constants.task_id(RGB_ONLY_TASK)
  return SampleDraw(modality_id=modality, task_id=task, flip=bool(u_flip < 0.5))
