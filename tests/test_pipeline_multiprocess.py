"""The pipeline with grain worker processes (mp_prefetch): balance, order and state survive.

Each iterator spawns 2 worker processes (~5 s on a busy 2-core machine), so this file keeps
their number small; iterators are closed in `finally` so workers never outlive a test.
"""

import contextlib

import numpy as np
import pytest

from unity_jax.data import examples
from unity_jax.data import pipeline

from test_pipeline import assert_same, make_batches, make_config, make_data, record_ids, take

WORKERS = 2


@contextlib.contextmanager
def worker_iterator(batches):
  iterator = pipeline.make_iterator(batches, worker_count=WORKERS, prefetch_buffer=2)
  try:
    yield iterator
  finally:
    iterator.close()


@pytest.mark.timeout(180)
def test_workers_keep_balance_order_and_checkpoint_state():
  config = make_config()
  in_process = take(pipeline.make_iterator(make_batches(config)), 205)
  with worker_iterator(make_batches(config)) as iterator:
    batches = take(iterator, 200)
    state = iterator.get_state()
    following = take(iterator, 5)
  for step, batch in enumerate(batches):
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [2, 2, 2, 2], step
  assert_same(batches + following, in_process)  # Workers change nothing but speed.
  with worker_iterator(make_batches(config)) as restored:
    restored.set_state(state)
    assert_same(take(restored, 5), following)
  in_process_restored = pipeline.make_iterator(make_batches(config))  # Worker count may change.
  in_process_restored.set_state(state)
  assert_same(take(in_process_restored, 5), following)


@pytest.mark.timeout(180)
def test_workers_report_or_skip_corrupt_records():
  config = make_config()
  data = make_data(corrupt={("general", 4)})
  with worker_iterator(make_batches(config, data)) as iterator:
    with pytest.raises(examples.RecordError, match="'general' record 4"):
      take(iterator, 30)
  config.data.skip_corrupt = True
  with worker_iterator(make_batches(config, data)) as iterator:
    batches = take(iterator, 30)  # 60 general draws = 5 epochs of 11 records
    skipped = iterator.skipped_corrupt
  assert skipped >= 5
  assert (2, 4) not in {r for b in batches for r in record_ids(b)}
  for batch in batches:
    assert np.bincount(batch["source_id"], minlength=4).tolist() == [2, 2, 2, 2]
