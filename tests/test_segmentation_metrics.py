"""Video-instance mIoU, the exact Hungarian matcher and COCO-style mask mAP, checked by hand and
against pycocotools."""

import itertools

import numpy as np
import pytest

from unity_jax.eval import segmentation

def _strip(*runs):
  """int32 [1, 1, N] from (instance id, length) runs."""
  return np.concatenate([np.full(length, i, np.int32) for i, length in runs])[None, None, :]


def _two_instance_case():
  """gt 1: 25 px, gt 2: 100 px; pred 5 covers 18 px of gt 1, pred 7 covers 53 px of gt 2."""
  gt = _strip((1, 25), (2, 100))
  pred = _strip((5, 18), (0, 7), (7, 53), (0, 47))
  return pred, gt  # IoUs 18/25 = 0.72 and 53/100 = 0.53.


# ------------------------------------------------------------------------------ IoU, matching


def test_iou_matrix_by_hand():
  gt = np.array([[[1, 1, 2, 2, 0]], [[1, 0, 2, 2, 0]]], np.int32)  # [2, 1, 5]
  pred = np.array([[[3, 3, 3, 0, 8]], [[3, 0, 0, 0, 8]]], np.int32)
  iou, gt_instances, pred_instances, pred_areas = segmentation.instance_iou_matrix(pred, gt)
  assert gt_instances.tolist() == [1, 2] and pred_instances.tolist() == [3, 8]
  assert pred_areas.tolist() == [4, 2]
  # gt 1 (3 px) vs pred 3 (4 px): 3 shared; gt 2 (4 px) vs pred 3: 1 shared; pred 8 hits nothing.
  np.testing.assert_allclose(iou, [[3 / 4, 0.0], [1 / 7, 0.0]])


def test_hungarian_beats_greedy_on_a_crafted_case():
  # Greedy max-IoU takes 0.6 first and ends at 0.6; the optimum pairs crosswise for 1.05.
  weights = np.array([[0.6, 0.5], [0.55, 0.0]])
  assert segmentation.max_weight_matching(weights) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2), (4, 4), (6, 3)])
def test_hungarian_matches_brute_force(shape):
  rng = np.random.default_rng(sum(shape))
  for trial in range(20):
    weights = rng.random(shape)
    if trial % 2:
      weights = np.round(weights, 1)  # Ties.
    pairs = segmentation.max_weight_matching(weights)
    rows, cols = zip(*pairs)
    assert len(pairs) == min(shape) and len(set(rows)) == len(set(cols)) == len(pairs)
    n, m = shape
    if n <= m:
      best = max(sum(weights[i, c] for i, c in enumerate(p))
                 for p in itertools.permutations(range(m), n))
    else:
      best = max(sum(weights[r, j] for j, r in enumerate(p))
                 for p in itertools.permutations(range(n), m))
    assert sum(weights[r, c] for r, c in pairs) == pytest.approx(best, abs=1e-12)


def test_matching_of_empty_and_invalid_weights():
  # A video without predicted (or without gt) instances matches nothing.
  assert segmentation.max_weight_matching(np.zeros((0, 3))) == []
  assert segmentation.max_weight_matching(np.zeros((2, 0))) == []
  with pytest.raises(ValueError, match="matrix"):
    segmentation.max_weight_matching(np.zeros(3))
  with pytest.raises(ValueError):
    segmentation.max_weight_matching(np.array([[np.nan, 0.5]]))


# -------------------------------------------------------------------------------------- mIoU


def test_mean_iou_by_hand():
  pred, gt = _two_instance_case()
  assert segmentation.mean_iou(pred, gt) == {"miou": pytest.approx((0.72 + 0.53) / 2)}
  assert segmentation.mean_iou(gt * 11 + 3 * (gt > 0), gt) == {"miou": 1.0}  # Relabelled ids.
  only_first = np.where(gt == 1, 1, 0).astype(np.int32)
  assert segmentation.mean_iou(only_first, gt) == {"miou": 0.5}  # gt 2 unmatched scores 0.
  extra = only_first.copy()
  extra[..., -5:] = 9  # An extra instance inside gt 2 is its only match: IoU 5/100.
  assert segmentation.mean_iou(extra, gt) == {"miou": pytest.approx((1 + 0.05) / 2)}
  assert segmentation.mean_iou(np.zeros_like(gt), gt) == {"miou": 0.0}


def test_mean_iou_is_a_video_iou():
  # gt instance only in frame 0; the prediction repeats it in frame 1: 4 / (4 + 4) = 0.5.
  gt = np.zeros((2, 2, 2), np.int32)
  gt[0] = 1
  assert segmentation.mean_iou(np.ones_like(gt), gt) == {"miou": 0.5}
  # Ids that swap between frames are two half-right tracks, not a perfect segmentation.
  gt = np.array([[[1, 2]], [[1, 2]]], np.int32)
  swapping = np.array([[[1, 2]], [[2, 1]]], np.int32)
  assert segmentation.mean_iou(swapping, gt) == {"miou": pytest.approx(1 / 3)}


def test_segmentation_errors_are_clear():
  gt = np.ones((2, 3, 3), np.int32)
  with pytest.raises(ValueError, match=r"pred_ids has shape \(2, 3, 4\).*gt_ids has shape"):
    segmentation.mean_iou(np.ones((2, 3, 4), np.int32), gt)
  with pytest.raises(ValueError, match="pred_ids must hold integer instance ids, got dtype float"):
    segmentation.mean_iou(gt.astype(np.float32), gt)
  with pytest.raises(ValueError, match="gt_ids holds negative id -1"):
    segmentation.mean_iou(gt, -gt)
  with pytest.raises(ValueError, match="no valid gt instances"):
    segmentation.mean_iou(gt, np.zeros_like(gt))
  with pytest.raises(ValueError, match="no valid gt instances"):
    segmentation.mask_average_precision(gt, np.zeros_like(gt))
  with pytest.raises(ValueError, match=r"no score for predicted instance ids \[1\]"):
    segmentation.mask_average_precision(gt, gt, {2: 0.5})
  with pytest.raises(ValueError, match="one gt video and one score mapping per predicted video"):
    segmentation.mask_average_precision([gt, gt], [gt])
  with pytest.raises(ValueError, match="pred_scores\\[0\\] contains 1 NaN"):
    segmentation.mask_average_precision(gt, gt, {1: float("nan")})


# ---------------------------------------------------------------------------------- mask mAP


def test_mask_map_by_hand():
  pred, gt = _two_instance_case()
  # Thresholds .5 (1 of 10): both TP -> AP 1. Thresholds .55-.70 (4): pred 5 (IoU .72) TP, then
  # pred 7 FP -> recall reaches 1/2 with precision 1: the 51 recall points 0..0.5 of 101 score 1.
  # Thresholds .75-.95 (5): no TP -> 0.
  half_recall_ap = np.sum(segmentation.COCO_RECALL_THRESHOLDS <= 0.5) / 101
  assert half_recall_ap == 51 / 101
  result = segmentation.mask_average_precision(pred, gt, {5: 0.9, 7: 0.8})
  assert result == pytest.approx({"mask_map": (1 + 4 * 51 / 101) / 10, "mask_ap50": 1.0,
                                  "mask_ap75": 0.0})
  # Ranking pred 7 first makes it the FP at .55-.70: precision 1/2 at recall 1/2 -> 51/101 / 2.
  swapped = segmentation.mask_average_precision(pred, gt, {5: 0.1, 7: 0.8})
  assert swapped["mask_ap50"] == 1.0
  assert swapped["mask_map"] == pytest.approx((1 + 4 * 51 / 101 / 2) / 10)


def test_mask_map_ranks_false_positives_by_score():
  gt = _strip((1, 10), (0, 10))
  pred = _strip((1, 10), (2, 10))  # Instance 2 is a pure false positive.
  # TP first: precision 1 at recall 1 -> AP 1. FP first: precision 1/2 at recall 1 -> AP 1/2.
  assert segmentation.mask_average_precision(pred, gt, {1: 0.9, 2: 0.1})["mask_map"] == 1.0
  assert segmentation.mask_average_precision(pred, gt, {1: 0.1, 2: 0.9})["mask_map"] == 0.5
  # Without scores the larger mask ranks first: the 12-px FP outranks the 10-px TP.
  bigger_fp = _strip((1, 10), (2, 12))
  gt_padded = _strip((1, 10), (0, 12))
  assert segmentation.mask_average_precision(bigger_fp, gt_padded)["mask_map"] == 0.5
  assert segmentation.mask_average_precision(gt, gt) == {
      "mask_map": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0}
  assert segmentation.mask_average_precision(np.zeros_like(gt), gt)["mask_map"] == 0.0


def test_mask_map_pools_detections_across_videos():
  # Video A: a perfect TP (score .9). Video B: an FP (score .95) and a perfect TP (score .5).
  # Pooled ranking FP, TP, TP: precision envelope 2/3 at every recall -> AP 2/3 at every IoU.
  # (The mean of per-video APs would be (1 + 1/2) / 2 = 3/4.)
  gt_a, pred_a = _strip((1, 10)), _strip((4, 10))
  gt_b, pred_b = _strip((1, 10), (0, 10)), _strip((1, 10), (2, 10))
  result = segmentation.mask_average_precision(
      [pred_a, pred_b], [gt_a, gt_b], [{4: 0.9}, {1: 0.5, 2: 0.95}])
  assert result == pytest.approx({"mask_map": 2 / 3, "mask_ap50": 2 / 3, "mask_ap75": 2 / 3})


def test_mask_map_agrees_with_pycocotools():
  """A video is scored as one image of its frames stacked vertically (same video IoU)."""
  # pycocotools is in the test extra: a hard import, so a broken install fails instead of skipping.
  from pycocotools import coco, cocoeval  # noqa: PLC0415
  from pycocotools import mask as mask_utils  # noqa: PLC0415
  rng = np.random.default_rng(4)
  preds, gts, scores = [], [], []
  for _ in range(4):
    gt = np.zeros((2, 12, 12), np.int32)
    pred = np.zeros_like(gt)
    for instance in range(1, rng.integers(2, 5)):
      y, x = rng.integers(0, 8, size=2)
      gt[:, y:y + 4, x:x + 4] = instance
      dy, dx = rng.integers(-1, 2, size=2)  # Predictions shifted by up to a pixel.
      pred[:, max(y + dy, 0):y + dy + 4, max(x + dx, 0):x + dx + 4] = instance + 10
    pred[:, rng.integers(0, 10), :] = 99  # A false positive stripe.
    preds.append(pred)
    gts.append(gt)
    scores.append({int(i): float(rng.random()) for i in np.unique(pred[pred > 0])})
  ours = segmentation.mask_average_precision(preds, gts, scores)

  def annotations(videos, video_scores=None):
    records = []
    for image_id, video in enumerate(videos):
      stacked = video.reshape(-1, video.shape[-1])
      for instance in np.unique(stacked[stacked > 0]):
        rle = mask_utils.encode(np.asfortranarray((stacked == instance).astype(np.uint8)))
        records.append({"id": len(records) + 1, "image_id": image_id, "category_id": 1,
                        "segmentation": rle, "area": float(mask_utils.area(rle)), "iscrowd": 0,
                        "score": video_scores[image_id][int(instance)] if video_scores else 1.0})
    return records

  ground_truth = coco.COCO()
  ground_truth.dataset = {"images": [{"id": i, "height": 24, "width": 12} for i in range(4)],
                          "annotations": annotations(gts), "categories": [{"id": 1}]}
  ground_truth.createIndex()
  detections = ground_truth.loadRes(annotations(preds, scores))
  evaluator = cocoeval.COCOeval(ground_truth, detections, "segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  assert ours == pytest.approx({"mask_map": evaluator.stats[0], "mask_ap50": evaluator.stats[1],
                                "mask_ap75": evaluator.stats[2]}, abs=1e-6)
