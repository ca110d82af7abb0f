"""Input checks shared by the evaluation metrics (pure numpy).

Every metric validates its inputs up front so that a wrong layout or a NaN fails loudly with the
argument names and shapes, instead of returning a silently wrong or NaN number.
"""

import numpy as np


def check_layout(name: str, array: np.ndarray, layout: str, last_dims: tuple = ()) -> None:
  """Raises a ValueError unless `array` has as many axes as `layout` and the fixed trailing sizes.

  Args:
    name: argument name used in the message, e.g. "pred_flow".
    array: the array to check.
    layout: axis names in brackets, e.g. "[T, H, W, 2]"; its comma count gives the rank.
    last_dims: required sizes of the trailing axes, e.g. (2,) for flow vectors.
  """
  ndim = layout.count(",") + 1
  trailing_ok = tuple(array.shape[array.ndim - len(last_dims):]) == tuple(last_dims)
  if array.ndim != ndim or not trailing_ok:
    raise ValueError(f"{name} must have layout {layout}, got shape {array.shape}")


def check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
  """Raises a ValueError naming both arguments and shapes when the shapes differ."""
  if a.shape != b.shape:
    raise ValueError(
        f"shape mismatch: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def check_finite(name: str, array: np.ndarray) -> None:
  """Raises a ValueError when `array` holds NaN or inf; a NaN metric must never pass silently."""
  finite = np.isfinite(array)
  if not finite.all():
    num_nan = int(np.isnan(array).sum())
    num_inf = int((~finite).sum()) - num_nan
    raise ValueError(f"{name} contains {num_nan} NaN and {num_inf} inf values "
                     f"(of {array.size}); predictions must be finite")


def check_integer(name: str, array: np.ndarray) -> None:
  """Raises a ValueError unless `array` has an integer dtype (instance ids, not colours)."""
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{name} must hold integer instance ids, got dtype {array.dtype}")


def require_any(name: str, mask: np.ndarray, why: str) -> None:
  """Raises a ValueError when the boolean `mask` selects nothing; `why` explains the mask."""
  if not mask.any():
    raise ValueError(f"no valid {name}: {why}")
