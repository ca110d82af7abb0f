"""Instance segmentation metrics for videos: mIoU (region similarity J) and COCO-style mask mAP.

Instance ids are int [T, H, W] with 0 = background. An id names one instance across the whole
video (a track), so every IoU here is a video IoU: the sum over frames of the intersection divided
by the sum over frames of the union. This rewards temporally consistent ids; it differs from
DAVIS's J, which averages per-frame IoUs. Ids of predictions and ground truth need not agree:
instances are matched by IoU (numpy, and scipy for the assignment).
"""

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize

from unity_jax.eval import validation

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # .5:.05:.95, as pycocotools builds them.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def instance_iou_matrix(pred_ids: np.ndarray, gt_ids: np.ndarray):
  """Video IoU between every gt instance and every predicted instance.

  Args:
    pred_ids: int [T, H, W], 0 = background.
    gt_ids: int [T, H, W], 0 = background.

  Returns:
    (iou float64 [G, P], gt_instance_ids int [G], pred_instance_ids int [P], pred_areas int [P]),
    ids sorted ascending, areas in pixels summed over frames.
  """
  pred_ids, gt_ids = np.asarray(pred_ids), np.asarray(gt_ids)
  validation.check_layout("gt_ids", gt_ids, "[T, H, W]")
  validation.check_same_shape("pred_ids", pred_ids, "gt_ids", gt_ids)
  for name, ids in (("pred_ids", pred_ids), ("gt_ids", gt_ids)):
    validation.check_integer(name, ids)
    if ids.size and ids.min() < 0:
      raise ValueError(f"{name} holds negative id {ids.min()}; ids are 0 (background) or positive")
  # Index 0 of each unique list is background (prepended), so both index spaces start at 0.
  gt_instance_ids = np.unique(gt_ids[gt_ids != 0])
  pred_instance_ids = np.unique(pred_ids[pred_ids != 0])
  gt_index = np.searchsorted(np.concatenate([[0], gt_instance_ids]), gt_ids.ravel())
  pred_index = np.searchsorted(np.concatenate([[0], pred_instance_ids]), pred_ids.ravel())
  num_gt, num_pred = len(gt_instance_ids) + 1, len(pred_instance_ids) + 1
  # One joint histogram gives every pairwise intersection in a single pass over the pixels.
  joint = np.bincount(gt_index * num_pred + pred_index, minlength=num_gt * num_pred)
  joint = joint.reshape(num_gt, num_pred)
  gt_areas, pred_areas = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
  intersection = joint[1:, 1:].astype(np.float64)
  union = gt_areas[:, None] + pred_areas[None, :] - intersection
  iou = intersection / np.maximum(union, 1)
  return iou, gt_instance_ids, pred_instance_ids, pred_areas


def max_weight_matching(weights: np.ndarray) -> list[tuple[int, int]]:
  """Exact one-to-one assignment maximising the total weight (Hungarian / Kuhn-Munkres, scipy's
  `linear_sum_assignment`); ties may pick any assignment of equal total.

  Args:
    weights: float [N, M], finite.

  Returns:
    min(N, M) pairs (row, col), sorted by row.
  """
  weights = np.asarray(weights, np.float64)
  if weights.ndim != 2:
    raise ValueError(f"weights must be a [N, M] matrix, got shape {weights.shape}")
  validation.check_finite("weights", weights)
  rows, cols = optimize.linear_sum_assignment(weights, maximize=True)
  return [(int(r), int(c)) for r, c in zip(rows, cols)]  # rows come back ascending


def mean_iou(pred_ids: np.ndarray, gt_ids: np.ndarray) -> dict:
  """mIoU / region similarity J: mean over gt instances of the video IoU with its matched pred.

  Matching is one-to-one and maximises the summed IoU (exact Hungarian, `max_weight_matching`);
  a gt instance matched to nothing, or only to a prediction it does not overlap, scores 0.
  Extra predicted instances are not penalised here (mask mAP penalises them).

  Args:
    pred_ids: int [T, H, W], 0 = background.
    gt_ids: int [T, H, W], 0 = background; must contain at least one instance.

  Returns:
    {"miou": in [0, 1], higher is better}.
  """
  iou, gt_instances, _, _ = instance_iou_matrix(pred_ids, gt_ids)
  if len(gt_instances) == 0:
    raise ValueError(f"no valid gt instances: gt_ids of shape {np.shape(gt_ids)} is all "
                     "background (0), so mIoU is undefined")
  matched_iou = np.zeros(len(gt_instances))
  if iou.shape[1]:
    for gt_index, pred_index in max_weight_matching(iou):
      matched_iou[gt_index] = iou[gt_index, pred_index]
  return {"miou": float(matched_iou.mean())}


def mask_average_precision(pred_ids: np.ndarray | Sequence[np.ndarray],
                           gt_ids: np.ndarray | Sequence[np.ndarray],
                           pred_scores: Mapping | Sequence[Mapping | None] | None = None) -> dict:
  """Class-agnostic COCO-style mask AP over video instances, averaged over IoU .5:.05:.95.

  Per video and IoU threshold, predictions in descending score order each take the unmatched gt
  instance of highest IoU >= threshold (true positive) or none (false positive), as pycocotools
  does. Detections of all videos are then ranked together by score; AP is the mean over 101
  recall points of the interpolated precision. Not modelled: categories, crowd regions, area
  ranges and the 100-detection cap (videos here hold far fewer instances).

  Args:
    pred_ids: int [T, H, W] (0 = background), or a sequence of such videos.
    gt_ids: int [T, H, W] (0 = background), or a sequence matching pred_ids.
    pred_scores: per video a mapping {instance id: confidence}; None ranks predictions by area
      (larger first, ties by ascending id), a deterministic stand-in for models without scores.

  Returns:
    {"mask_map": AP averaged over the 10 IoU thresholds, "mask_ap50": AP at IoU 0.5,
     "mask_ap75": AP at IoU 0.75}; all in [0, 1], higher is better.
  """
  if isinstance(pred_ids, np.ndarray) and pred_ids.ndim == 3:
    pred_ids, gt_ids, pred_scores = [pred_ids], [gt_ids], [pred_scores]
  elif pred_scores is None:
    pred_scores = [None] * len(pred_ids)
  if not len(pred_ids) == len(gt_ids) == len(pred_scores):
    raise ValueError(f"need one gt video and one score mapping per predicted video, got "
                     f"{len(pred_ids)} pred, {len(gt_ids)} gt, {len(pred_scores)} score entries")
  scores, true_positive, num_gt = [], [], 0  # true_positive: [num_thresholds] per detection.
  for video, (pred, gt, video_scores) in enumerate(zip(pred_ids, gt_ids, pred_scores)):
    iou, gt_instances, pred_instances, pred_areas = instance_iou_matrix(pred, gt)
    num_gt += len(gt_instances)
    score = _instance_scores(pred_instances, pred_areas, video_scores, f"pred_scores[{video}]")
    order = np.argsort(-score, kind="stable")
    scores.append(score[order])
    true_positive.append(_greedy_matches(iou[:, order], COCO_IOU_THRESHOLDS))
  if num_gt == 0:
    raise ValueError("no valid gt instances: every gt video is all background (0), "
                     "so mask AP is undefined")
  scores = np.concatenate(scores)
  true_positive = np.concatenate(true_positive, axis=0)
  order = np.argsort(-scores, kind="mergesort")  # pycocotools' stable ranking across images.
  ap = np.array([_interpolated_ap(true_positive[order, t], num_gt)
                 for t in range(len(COCO_IOU_THRESHOLDS))])
  return {"mask_map": float(ap.mean()), "mask_ap50": float(ap[0]), "mask_ap75": float(ap[5])}


def _instance_scores(pred_instances, pred_areas, video_scores, name) -> np.ndarray:
  """Returns float [P] confidences aligned with pred_instances (area when no scores given)."""
  if video_scores is None:
    # Areas fit exactly in float64; ties keep ascending-id order through the stable sort.
    return pred_areas.astype(np.float64)
  if not isinstance(video_scores, Mapping):
    raise ValueError(f"{name} must map instance id -> score, got {type(video_scores).__name__}")
  missing = [int(i) for i in pred_instances if int(i) not in video_scores]
  if missing:
    raise ValueError(f"{name} has no score for predicted instance ids {missing}")
  score = np.array([video_scores[int(i)] for i in pred_instances], np.float64)
  validation.check_finite(name, score)
  return score


def _greedy_matches(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """bool [P, len(thresholds)]: whether each prediction (columns of iou, ranked) is a TP."""
  num_gt, num_pred = iou.shape
  true_positive = np.zeros((num_pred, len(thresholds)), bool)
  for t, threshold in enumerate(thresholds):
    gt_taken = np.zeros(num_gt, bool)
    for p in range(num_pred):
      candidates = np.where(gt_taken | (iou[:, p] < threshold), -1.0, iou[:, p])
      if num_gt and candidates.max() >= 0:
        # The last of equal best IoUs, as pycocotools (it replaces its pick on ties).
        best = num_gt - 1 - int(np.argmax(candidates[::-1]))
        gt_taken[best] = True
        true_positive[p, t] = True
  return true_positive


def _interpolated_ap(true_positive: np.ndarray, num_gt: int) -> float:
  """COCO 101-point interpolated AP of detections already ranked by descending score."""
  tp = np.cumsum(true_positive, dtype=np.float64)
  fp = np.cumsum(~true_positive, dtype=np.float64)
  recall = tp / num_gt
  precision = tp / np.maximum(tp + fp, 1.0)  # tp + fp >= 1 at every ranked detection.
  # Precision envelope: the best precision at any recall at least this high.
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  index = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
  # index == len(precision) means the recall point is never reached: precision 0 there.
  return float(np.concatenate([precision, [0.0]])[index].mean())

