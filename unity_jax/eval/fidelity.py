"""Control fidelity: how well a generated video follows its condition.

The condition modality's numbers (depth, flow, instance ids, keypoints) are compared with the
numbers an estimator recovers from the generated video, using the modality's own metric with the
condition as ground truth. `baseline_metrics` (baselines.py) gives the trivial reference numbers.

Example (one row group of a report, see report.format_markdown_table):
  results = {"depth": {
      "model": control_fidelity("depth", cond_depth, est_disparity, max_depth=20.0),
      "baselines": baseline_metrics("depth", cond_depth, max_depth=20.0)}}
"""

import numpy as np

from unity_jax import constants
from unity_jax.eval import metrics
from unity_jax.eval import segmentation

FIDELITY_MODALITIES = ("depth", "flow", "segmentation", "skeleton")
"""Modalities with a metric; DensePose (IUV) has none yet."""


def control_fidelity(modality: str, condition_values: np.ndarray, estimated_values: np.ndarray,
                     *, max_depth: float | None = None, depth_kind: str = "disparity",
                     pck_alpha: float = metrics.DEFAULT_PCK_ALPHA) -> dict:
  """Compares a condition with the values estimated back from the generated video.

  Args:
    modality: one of FIDELITY_MODALITIES.
    condition_values: ground truth for the metric:
      depth float [T, H, W] metres | flow float [T, H, W, 2] px | segmentation int [T, H, W]
      instance ids (0 = background) | skeleton float [T, P, 17, 3] (x, y, visible).
    estimated_values: same layout as condition_values; for depth, an affine-invariant disparity
      (depth_kind="disparity") or a depth map of any scale (depth_kind="depth").
    max_depth: metres, required for depth: the valid range and clip bound (DepthCrafter).
    depth_kind: "disparity" or "depth", what estimated depth values are.
    pck_alpha: PCK threshold as a fraction of the person size (skeleton).

  Returns:
    depth: {"abs_rel", "delta1", "rmse"}; flow: {"epe", "outliers_3px", "fl_kitti"};
    segmentation: {"miou", "mask_map", "mask_ap50", "mask_ap75"} (estimates carry no scores, so
    mask AP ranks instances by area); skeleton: {"pck"}. Plain floats.
  """
  check_fidelity_modality(modality)
  if modality == "depth":
    if max_depth is None:
      raise ValueError("control_fidelity('depth', ...) needs max_depth (metres), the upper bound "
                       "of valid condition depth")
    return metrics.depth_metrics(estimated_values, condition_values, max_depth,
                                 pred_kind=depth_kind)
  if modality == "flow":
    return metrics.flow_metrics(estimated_values, condition_values)
  if modality == "segmentation":
    return {**segmentation.mean_iou(estimated_values, condition_values),
            **segmentation.mask_average_precision(estimated_values, condition_values)}
  return metrics.keypoint_pck(estimated_values, condition_values, alpha=pck_alpha)


def check_fidelity_modality(modality: str) -> None:
  """Raises a ValueError for unknown modalities and for known ones without a metric."""
  constants.modality_id(modality)
  if modality not in FIDELITY_MODALITIES:
    raise ValueError(f"no control-fidelity metric for modality {modality!r}; "
                     f"supported: {list(FIDELITY_MODALITIES)}")
