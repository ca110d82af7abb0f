"""Names shared by every part of unity_jax: modalities, source groups, tasks.

The integer ids below are stable: they are written into OpenUni records, carried in batches
and used to index the learned modality embedding table. Append, never reorder.
"""

MODALITIES = ("depth", "flow", "segmentation", "skeleton", "densepose")
"""Auxiliary modalities in id order (id = index). -1 means "no modality" (RGB-only sample)."""

PIXEL_ALIGNED_MODALITIES = ("depth", "flow", "densepose")
"""Stage-1 modalities of the paper's curriculum (pixel-aligned with the RGB frames)."""

SOURCES = ("single_person", "two_person", "general", "subject_centric")
"""OpenUni's four source groups (roles of: single-person, two-person, Koala-36M, OpenS2V)."""

TASKS = ("control", "estimate", "joint")
"""Per-sample tasks chosen by dynamic noising.

control:  modality clean (t_m = 0), RGB noised, loss on RGB tokens.
estimate: RGB clean (t_r = 0), modality noised, loss on modality tokens.
joint:    both noised, loss on both.
"""

T2V = "t2v"
"""Loss label of RGB-only samples (no modality stream): plain text-to-video generation. Not a
task id: such samples are routed as "control" (RGB noised, loss on RGB tokens), but they have no
condition, so their loss is reported as `loss/task/t2v`, never under `loss/task/control`."""

LOSS_TASKS = (*TASKS, T2V)
"""Per-task loss labels (`loss/task/<name>`, `count/task/<name>`): TASKS on samples with a
modality stream, then T2V on RGB-only samples."""

NO_MODALITY = -1


def modality_id(name: str) -> int:
  """Returns the stable id of a modality name, or raises a ValueError naming the choices."""
  if name not in MODALITIES:
    raise ValueError(f"unknown modality {name!r}; expected one of {list(MODALITIES)}")
  return MODALITIES.index(name)


def source_id(name: str) -> int:
  """Returns the stable id of a source group name, or raises a ValueError naming the choices."""
  if name not in SOURCES:
    raise ValueError(f"unknown source {name!r}; expected one of {list(SOURCES)}")
  return SOURCES.index(name)


def task_id(name: str) -> int:
  """Returns the stable id of a task name, or raises a ValueError naming the choices."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
  return TASKS.index(name)
