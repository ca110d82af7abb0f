"""Ordered, bounded parallel map over spawned worker processes (used by synth and convert).

Spawned (not forked) workers because the parent may have imported jax, whose threads do not
survive a fork. Scripts that call `imap_ordered` with workers > 1 need
`if __name__ == "__main__":` around their entry point.
"""

import collections
import multiprocessing
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int,
                 max_in_flight_per_worker: int = 2) -> Iterator[R]:
  """Yields fn(item) for each item, in order, computed by `workers` processes.

  At most `workers * max_in_flight_per_worker` results are pending at once, so memory stays
  bounded however many items there are. workers <= 1 runs in this process. `fn` must be a
  module-level function (it is pickled); an exception in a worker is re-raised here and the
  pool is terminated.
  """
  if workers <= 1:
    yield from map(fn, items)
    return
  context = multiprocessing.get_context("spawn")
  with context.Pool(workers) as pool:
    pending = collections.deque()
    limit = workers * max_in_flight_per_worker
    for item in items:
      pending.append(pool.apply_async(fn, (item,)))
      if len(pending) >= limit:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()
