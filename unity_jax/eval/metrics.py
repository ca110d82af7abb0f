"""Evaluation metrics for depth, optical flow, keypoints and video quality (pure numpy).

Value conventions (shared with the synthetic world and the data pipeline):
  depth      float32 [T, H, W] metres
  flow       float32 [T, H, W, 2] pixels, (dx, dy)
  keypoints  float32 [T, P, 17, 3] (x, y, visible 0/1), pixels
  video      uint8   [T, H, W, 3]
Segmentation metrics (instance ids int32 [T, H, W], 0 = background) live in `segmentation.py`.

Every function returns a dict of plain Python floats, so results are JSON-serialisable as is.
Predictions holding NaN or inf raise a ValueError instead of producing a NaN metric.
"""

import numpy as np

from unity_jax.eval import validation

MIN_DEPTH = 1e-3
"""Depths at or below this (metres) are invalid ground truth; aligned predictions are clipped to
[MIN_DEPTH, max_depth] and aligned disparities to >= MIN_DEPTH (DepthCrafter's constants)."""

DELTA1_THRESHOLD = 1.25
FLOW_OUTLIER_PIXELS = 3.0
KITTI_OUTLIER_RELATIVE = 0.05
DEFAULT_PCK_ALPHA = 0.2


# ------------------------------------------------------------------------------------- depth


def depth_valid_mask(gt_depth: np.ndarray, max_depth: float) -> np.ndarray:
  """Returns bool [T, H, W]: MIN_DEPTH < gt < max_depth (NaN ground truth is invalid)."""
  with np.errstate(invalid="ignore"):
    return (gt_depth > MIN_DEPTH) & (gt_depth < max_depth)


def fit_disparity_scale_shift(pred_disparity: np.ndarray, gt_depth: np.ndarray,
                              valid: np.ndarray) -> tuple[float, float]:
  """Least-squares (s, b) minimising ||s * pred + b - 1 / gt||^2 over the valid pixels.

  One fit for the whole sequence (not per frame), in float64. A prediction that is constant over
  the valid pixels has no scale to fit: then s = 0 and b = mean(1 / gt), the best constant, which
  is also the minimum-norm answer `np.linalg.lstsq` would give for the rank-deficient system.
  """
  pred = pred_disparity[valid].astype(np.float64)
  # DepthCrafter adds 1e-8 before inverting; kept so the numbers match its protocol.
  target = 1.0 / (gt_depth[valid].astype(np.float64) + 1e-8)
  pred_centred = pred - pred.mean()
  variance = np.mean(pred_centred**2)
  if variance <= 1e-24 * max(1.0, pred.mean()**2):
    return 0.0, float(target.mean())
  scale = np.mean(pred_centred * (target - target.mean())) / variance
  shift = target.mean() - scale * pred.mean()
  return float(scale), float(shift)


def align_disparity_to_depth(pred_disparity: np.ndarray, gt_depth: np.ndarray,
                             max_depth: float) -> tuple[np.ndarray, float, float]:
  """Aligns an affine-invariant disparity prediction to metric depth (DepthCrafter protocol).

  Args:
    pred_disparity: float [T, H, W], any affine-invariant inverse depth.
    gt_depth: float [T, H, W] metres.
    max_depth: float, upper bound of valid ground truth and of aligned depth.

  Returns:
    (aligned_depth float64 [T, H, W] in [MIN_DEPTH, max_depth], scale, shift) where
    aligned_depth = clip(1 / max(scale * pred + shift, MIN_DEPTH), MIN_DEPTH, max_depth).
  """
  pred_disparity, gt_depth = np.asarray(pred_disparity), np.asarray(gt_depth)
  valid = _check_depth_inputs(pred_disparity, gt_depth, max_depth)
  scale, shift = fit_disparity_scale_shift(pred_disparity, gt_depth, valid)
  aligned_disparity = np.maximum(scale * pred_disparity.astype(np.float64) + shift, MIN_DEPTH)
  aligned_depth = np.clip(1.0 / aligned_disparity, MIN_DEPTH, max_depth)
  return aligned_depth, scale, shift


def depth_metrics(pred_disparity: np.ndarray, gt_depth: np.ndarray, max_depth: float,
                  pred_kind: str = "disparity") -> dict:
  """AbsRel, delta<1.25 and RMSE after one disparity-space scale-and-shift fit per sequence.

  Follows DepthCrafter's benchmark (benchmark/eval/eval.py + metric.py): valid pixels are
  1e-3 < gt < max_depth; one least-squares (s, b) over all valid pixels of the sequence maps the
  prediction to 1 / gt; aligned depth = clip(1 / max(s * pred + b, 1e-3), 1e-3, max_depth); each
  metric is a mean over the valid pixels of a frame, then a mean over the frames that have valid
  pixels. One deviation: DepthCrafter clips the raw prediction to >= 1e-3 before the fit; we do
  not, because affine-invariant predictions (e.g. values decoded to [-1, 1]) may be negative.

  Args:
    pred_disparity: float [T, H, W] affine-invariant disparity (inverse depth), or a depth map
      of any scale when pred_kind == "depth" (then inverted to disparity first).
    gt_depth: float [T, H, W] metres.
    max_depth: float metres; ground truth at or beyond it is ignored.
    pred_kind: "disparity" (default) or "depth".

  Returns:
    {"abs_rel": lower is better, "delta1": fraction in [0, 1], higher is better,
     "rmse": metres, lower is better}.
  """
  if pred_kind == "depth":
    validation.check_finite("pred_depth", np.asarray(pred_disparity))
    pred_disparity = 1.0 / np.maximum(np.asarray(pred_disparity, np.float64), MIN_DEPTH)
  elif pred_kind != "disparity":
    raise ValueError(f"pred_kind must be 'disparity' or 'depth', got {pred_kind!r}")
  gt_depth = np.asarray(gt_depth)
  aligned_depth, _, _ = align_disparity_to_depth(pred_disparity, gt_depth, max_depth)
  valid = depth_valid_mask(gt_depth, max_depth)
  gt = np.where(valid, gt_depth, 1.0).astype(np.float64)  # Placeholder 1.0 avoids 0-division.
  pixels_per_frame = valid.sum(axis=(1, 2))
  frames = pixels_per_frame > 0

  def frame_mean(per_pixel):  # [T', ] means over each frame's valid pixels, empty frames dropped.
    return np.where(valid, per_pixel, 0.0).sum(axis=(1, 2))[frames] / pixels_per_frame[frames]

  ratio = np.maximum(aligned_depth / gt, gt / aligned_depth)
  return {
      "abs_rel": float(frame_mean(np.abs(aligned_depth - gt) / gt).mean()),
      "delta1": float(frame_mean((ratio < DELTA1_THRESHOLD).astype(np.float64)).mean()),
      "rmse": float(np.sqrt(frame_mean((aligned_depth - gt)**2)).mean()),
  }


def _check_depth_inputs(pred_disparity: np.ndarray, gt_depth: np.ndarray,
                        max_depth: float) -> np.ndarray:
  """Validates depth inputs and returns the bool [T, H, W] valid mask."""
  validation.check_layout("gt_depth", gt_depth, "[T, H, W]")
  validation.check_same_shape("pred_disparity", pred_disparity, "gt_depth", gt_depth)
  validation.check_finite("pred_disparity", pred_disparity)
  if not max_depth > MIN_DEPTH:
    raise ValueError(f"max_depth must be > {MIN_DEPTH} metres, got {max_depth}")
  valid = depth_valid_mask(gt_depth, max_depth)
  if not valid.any():
    finite = gt_depth[np.isfinite(gt_depth)]
    gt_range = f"{finite.min()}..{finite.max()}" if finite.size else "no finite values"
    raise ValueError(f"no valid depth pixels: no ground-truth depth lies in ({MIN_DEPTH}, "
                     f"{max_depth}) metres (gt range: {gt_range}, shape {gt_depth.shape})")
  return valid


# -------------------------------------------------------------------------------------- flow


def flow_metrics(pred_flow: np.ndarray, gt_flow: np.ndarray,
                 valid_mask: np.ndarray | None = None) -> dict:
  """End-point error and outlier rates, pooled over all valid pixels of all frames.

  Args:
    pred_flow: float [T, H, W, 2] pixels (dx, dy).
    gt_flow: float [T, H, W, 2] pixels; pixels with non-finite ground truth are ignored.
    valid_mask: optional bool [T, H, W]; only True pixels count (e.g. sparse KITTI-style flow).

  Returns:
    {"epe": mean |pred - gt|_2 in pixels,
     "outliers_3px": fraction of pixels with EPE > 3 px,
     "fl_kitti": KITTI Fl, fraction with EPE > 3 px AND EPE > 5% of |gt|}; all lower is better.
  """
  pred_flow, gt_flow = np.asarray(pred_flow), np.asarray(gt_flow)
  validation.check_layout("gt_flow", gt_flow, "[T, H, W, 2]", (2,))
  validation.check_same_shape("pred_flow", pred_flow, "gt_flow", gt_flow)
  validation.check_finite("pred_flow", pred_flow)
  valid = np.isfinite(gt_flow).all(axis=-1)
  if valid_mask is not None:
    valid_mask = np.asarray(valid_mask, bool)
    validation.check_same_shape("valid_mask", valid_mask, "gt_flow[..., 0]", gt_flow[..., 0])
    valid &= valid_mask
  validation.require_any("flow pixels", valid,
                         "valid_mask is all False or the ground truth is non-finite everywhere")
  pred = pred_flow[valid].astype(np.float64)
  gt = gt_flow[valid].astype(np.float64)
  epe = np.linalg.norm(pred - gt, axis=-1)
  gt_magnitude = np.linalg.norm(gt, axis=-1)
  outlier = epe > FLOW_OUTLIER_PIXELS
  return {
      "epe": float(epe.mean()),
      "outliers_3px": float(outlier.mean()),
      "fl_kitti": float((outlier & (epe > KITTI_OUTLIER_RELATIVE * gt_magnitude)).mean()),
  }


# --------------------------------------------------------------------------------- keypoints


def keypoint_pck(pred_keypoints: np.ndarray, gt_keypoints: np.ndarray,
                 alpha: float = DEFAULT_PCK_ALPHA) -> dict:
  """PCK@alpha: fraction of visible gt joints predicted within alpha * person size.

  Person size is max(height, width) of the bounding box of that person's visible gt joints in
  that frame. Persons are matched by index (pred[:, p] is gt[:, p]). A joint counts as correct
  when the prediction marks it visible (> 0) and its distance to gt is <= alpha * size. Persons
  whose visible joints span a zero-size box (fewer than two distinct points) have no defined
  threshold and are left out. The fraction pools all counted joints of all frames and persons.

  Args:
    pred_keypoints: float [T, P, 17, 3] (x, y, visible) pixels.
    gt_keypoints: float [T, P, 17, 3] (x, y, visible 0/1) pixels.
    alpha: float, threshold as a fraction of the person size (0.2 by default).

  Returns:
    {"pck": fraction in [0, 1], higher is better}.
  """
  pred_keypoints, gt_keypoints = np.asarray(pred_keypoints), np.asarray(gt_keypoints)
  validation.check_layout("gt_keypoints", gt_keypoints, "[T, P, 17, 3]", (17, 3))
  validation.check_same_shape("pred_keypoints", pred_keypoints, "gt_keypoints", gt_keypoints)
  validation.check_finite("pred_keypoints", pred_keypoints)
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  gt_visible = gt_keypoints[..., 2] > 0
  gt_xy = gt_keypoints[..., :2].astype(np.float64)
  # Box of the visible joints per (frame, person); invisible joints must not widen it.
  low = np.where(gt_visible[..., None], gt_xy, np.inf).min(axis=2)
  high = np.where(gt_visible[..., None], gt_xy, -np.inf).max(axis=2)
  # A person without visible joints has low = inf, high = -inf: size -inf, treated as 0.
  size = np.maximum(high - low, 0.0).max(axis=-1)  # [T, P]
  counted = gt_visible & (size > 0)[..., None]
  validation.require_any(
      "keypoints", counted,
      "no gt person has visible joints spanning a non-zero box (all invisible or single points)")
  distance = np.linalg.norm(pred_keypoints[..., :2].astype(np.float64) - gt_xy, axis=-1)
  correct = (distance <= alpha * size[..., None]) & (pred_keypoints[..., 2] > 0)
  return {"pck": float(correct[counted].mean())}


# ----------------------------------------------------------------------------- video quality


def temporal_flickering(video: np.ndarray) -> dict:
  """VBench temporal flickering: (255 - mean_i mean|f_i - f_{i+1}|) / 255.

  Args:
    video: uint8 [T, H, W, 3] with T >= 2.

  Returns:
    {"temporal_flickering": score in [0, 1]; 1.0 for a static video, higher is better}.
  """
  video = np.asarray(video)
  validation.check_layout("video", video, "[T, H, W, 3]", (3,))
  if video.dtype != np.uint8:
    raise ValueError(f"video must be uint8 [T, H, W, 3], got dtype {video.dtype}")
  if video.shape[0] < 2:
    raise ValueError(f"video needs at least 2 frames for temporal flickering, got {video.shape}")
  frames = video.astype(np.int16)  # int16 so differences of uint8 values do not wrap around.
  mean_abs_diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)).mean()
  return {"temporal_flickering": float((255.0 - mean_abs_diff) / 255.0)}
