"""Depth, flow, keypoint and flickering metrics, control fidelity, baselines and the report table.

Expected values are computed by hand in each test (fractions written out), plus property tests.
Segmentation metrics are tested in test_segmentation_metrics.py.
"""

import json

import numpy as np
import pytest

from unity_jax.eval import baselines
from unity_jax.eval import fidelity
from unity_jax.eval import metrics
from unity_jax.eval import report

# The protocol inverts gt as 1 / (gt + 1e-8) (DepthCrafter), so hand values hold to ~1e-8.
DEPTH_TOL = 1e-7


def _video(values, dtype=np.float32):
  """[T, 1, W] from nested lists [[frame0 pixels], [frame1 pixels], ...]."""
  return np.asarray(values, dtype)[:, None, :]


# ------------------------------------------------------------------------------------- depth


def test_depth_constant_prediction_is_best_constant():
  # 1/gt = [1, 1/2] -> fitted constant disparity 3/4 -> depth 4/3 at both pixels.
  result = metrics.depth_metrics(_video([[5.0, 5.0]]), _video([[1.0, 2.0]]), max_depth=80.0)
  assert result["abs_rel"] == pytest.approx((1 / 3 + (2 / 3) / 2) / 2, abs=DEPTH_TOL)
  assert result["delta1"] == 0.0  # Ratios 4/3 and 3/2, both >= 1.25.
  assert result["rmse"] == pytest.approx(np.sqrt(((1 / 3)**2 + (2 / 3)**2) / 2), abs=DEPTH_TOL)


def test_depth_least_squares_fit_by_hand():
  # pred [0, 1, 2] against 1/gt [1, 1/2, 1/4]: s = cov/var = -3/8, b = 23/24, so the aligned
  # disparities are [23, 14, 5] / 24 and the aligned depths [24/23, 12/7, 24/5].
  pred, gt = _video([[0.0, 1.0, 2.0]]), _video([[1.0, 2.0, 4.0]])
  aligned, scale, shift = metrics.align_disparity_to_depth(pred, gt, max_depth=80.0)
  assert scale == pytest.approx(-3 / 8, abs=DEPTH_TOL)
  assert shift == pytest.approx(23 / 24, abs=DEPTH_TOL)
  np.testing.assert_allclose(aligned[0, 0], [24 / 23, 12 / 7, 24 / 5], atol=1e-6)
  result = metrics.depth_metrics(pred, gt, max_depth=80.0)
  assert result["abs_rel"] == pytest.approx((1 / 23 + 1 / 7 + 1 / 5) / 3, abs=DEPTH_TOL)
  assert result["delta1"] == 1.0  # Ratios 24/23, 7/6, 6/5 are all below 1.25.
  # max_depth 4.5 keeps gt 4 valid (same fit) but clips the aligned 4.8 to 4.5: error 1/8.
  clipped = metrics.depth_metrics(pred, gt, max_depth=4.5)
  assert clipped["abs_rel"] == pytest.approx((1 / 23 + 1 / 7 + 1 / 8) / 3, abs=DEPTH_TOL)


def test_depth_invalid_pixels_excluded_from_fit_and_metric():
  # max_depth 3 drops gt 4 (and gt 0 is below 1e-3): the fit on [0, 1] vs [1, 1/2] is exact.
  pred, gt = _video([[0.0, 1.0, 2.0, 9.0]]), _video([[1.0, 2.0, 4.0, 0.0]])
  result = metrics.depth_metrics(pred, gt, max_depth=3.0)
  assert result["abs_rel"] == pytest.approx(0.0, abs=DEPTH_TOL)
  assert result["delta1"] == 1.0


def test_depth_averages_frames_not_pixels():
  # Constant pred; valid 1/gt over the sequence: [1] and [1, 1, 1, 2] -> mean 6/5 -> depth 5/6.
  # Frame 0 AbsRel 1/6; frame 1 (3 * 1/6 + 2/3) / 4 = 7/24; frame 2 has no valid pixel (skipped).
  gt = _video([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
  result = metrics.depth_metrics(np.ones_like(gt), gt, max_depth=10.0)
  assert result["abs_rel"] == pytest.approx((1 / 6 + 7 / 24) / 2, abs=DEPTH_TOL)  # Not 4/15.


def test_depth_perfect_and_affine_invariant():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.5, 20.0, size=(3, 8, 8)).astype(np.float32)
  perfect = metrics.depth_metrics(3.0 / gt + 0.5, gt, max_depth=30.0)
  assert perfect["abs_rel"] < 1e-6 and perfect["rmse"] < 1e-5 and perfect["delta1"] == 1.0
  as_depth = metrics.depth_metrics(7.0 * gt, gt, max_depth=30.0, pred_kind="depth")
  assert as_depth["abs_rel"] < 1e-6
  noisy = 1.0 / gt + rng.normal(0, 0.05, size=gt.shape)
  base = metrics.depth_metrics(noisy, gt, max_depth=30.0)
  for scale, shift in [(4.0, -2.0), (-0.5, 3.0)]:  # Any affine map of the same prediction.
    moved = metrics.depth_metrics(scale * noisy + shift, gt, max_depth=30.0)
    for key in base:
      assert moved[key] == pytest.approx(base[key], rel=1e-6, abs=1e-9)
  assert perfect["abs_rel"] < base["abs_rel"] and base["delta1"] <= perfect["delta1"]


def _depthcrafter_reference(pred_disparity, gt_depth, max_depth):
  """DepthCrafter's benchmark/eval protocol written out plainly (lstsq, clips, frame means)."""
  valid = (gt_depth > 1e-3) & (gt_depth < max_depth)
  pred = np.clip(pred_disparity, 1e-3, None).astype(np.float64)
  design = np.stack([pred[valid], np.ones(valid.sum())], axis=-1)
  (scale, shift), *_ = np.linalg.lstsq(design, 1.0 / (gt_depth[valid] + 1e-8), rcond=None)
  depth = np.clip(1.0 / np.clip(scale * pred + shift, 1e-3, None), 1e-3, max_depth)
  rel, delta1 = [], []
  for t in range(len(gt_depth)):
    if valid[t].any():
      d, g = depth[t][valid[t]], gt_depth[t][valid[t]]
      rel.append(np.mean(np.abs(d - g) / g))
      delta1.append(np.mean(np.maximum(d / g, g / d) < 1.25))
  return {"abs_rel": np.mean(rel), "delta1": np.mean(delta1)}


def test_depth_matches_depthcrafter_reference():
  rng = np.random.default_rng(5)
  gt = rng.uniform(0.5, 30.0, size=(4, 6, 7))
  gt[0, :2] = 0.0  # Missing depth.
  gt[2] = 40.0  # A frame beyond max_depth: no valid pixels, skipped.
  # Positive predictions, so DepthCrafter's pre-fit clip to >= 1e-3 is a no-op here.
  pred = 1.0 / np.maximum(gt, 0.5) * rng.uniform(0.7, 1.3, size=gt.shape) + 0.05
  ours = metrics.depth_metrics(pred, gt, max_depth=20.0)
  reference = _depthcrafter_reference(pred, gt, 20.0)
  assert ours["abs_rel"] == pytest.approx(reference["abs_rel"], rel=1e-9)
  assert ours["delta1"] == pytest.approx(reference["delta1"], rel=1e-12)
  assert 0.05 < ours["abs_rel"] < 0.5 and 0.2 < ours["delta1"] < 1.0  # A non-trivial case.


def test_depth_errors_are_clear():
  gt = np.ones((2, 4, 4), np.float32)
  with pytest.raises(ValueError, match=r"pred_disparity has shape \(2, 4, 5\).*\(2, 4, 4\)"):
    metrics.depth_metrics(np.ones((2, 4, 5)), gt, max_depth=10.0)
  with pytest.raises(ValueError, match="no valid depth pixels"):
    metrics.depth_metrics(np.ones_like(gt), gt * 50.0, max_depth=10.0)
  bad = np.ones_like(gt)
  bad[0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="pred_disparity contains 1 NaN"):
    metrics.depth_metrics(bad, gt, max_depth=10.0)
  with pytest.raises(ValueError, match=r"gt_depth must have layout \[T, H, W\]"):
    metrics.depth_metrics(np.ones((4, 4)), np.ones((4, 4)), max_depth=10.0)
  with pytest.raises(ValueError, match="pred_kind"):
    metrics.depth_metrics(gt, gt, max_depth=10.0, pred_kind="inverse")


# -------------------------------------------------------------------------------------- flow


def test_flow_epe_and_outliers_by_hand():
  gt = np.zeros((1, 2, 2, 2), np.float32)
  pred = gt.copy()
  pred[0, 0, 0] = (3.0, 4.0)  # EPE 5 at one of four pixels.
  result = metrics.flow_metrics(pred, gt)
  assert result == pytest.approx({"epe": 5 / 4, "outliers_3px": 1 / 4, "fl_kitti": 1 / 4})
  # KITTI Fl also needs EPE > 5% of |gt|: EPE 4 on |gt| = 100 is a 3px outlier, not an Fl one.
  gt[0, 1, 1] = (100.0, 0.0)
  pred[0, 1, 1] = (104.0, 0.0)
  result = metrics.flow_metrics(pred, gt)
  assert result == pytest.approx({"epe": 9 / 4, "outliers_3px": 2 / 4, "fl_kitti": 1 / 4})


def test_flow_mask_and_nonfinite_gt_are_ignored():
  gt = np.zeros((1, 1, 3, 2), np.float32)
  pred = np.zeros_like(gt)
  pred[0, 0, 0] = (0.0, 2.0)
  pred[0, 0, 1] = (6.0, 8.0)
  gt[0, 0, 2] = np.nan  # Missing ground truth.
  assert metrics.flow_metrics(pred, gt)["epe"] == pytest.approx((2 + 10) / 2)
  mask = np.array([[[True, False, True]]])
  assert metrics.flow_metrics(pred, gt, valid_mask=mask)["epe"] == pytest.approx(2.0)
  assert metrics.flow_metrics(gt[..., :2, :], gt[..., :2, :])["epe"] == 0.0  # Perfect.


def test_flow_errors_are_clear():
  gt = np.zeros((2, 3, 3, 2), np.float32)
  with pytest.raises(ValueError, match=r"pred_flow has shape \(2, 3, 3, 3\).*gt_flow"):
    metrics.flow_metrics(np.zeros((2, 3, 3, 3)), gt)
  with pytest.raises(ValueError, match=r"gt_flow must have layout \[T, H, W, 2\]"):
    metrics.flow_metrics(np.zeros((2, 3, 3, 3)), np.zeros((2, 3, 3, 3)))
  infinite = gt.copy()
  infinite[1, 2, 0, 1] = np.inf
  with pytest.raises(ValueError, match="pred_flow contains 0 NaN and 1 inf"):
    metrics.flow_metrics(infinite, gt)
  with pytest.raises(ValueError, match="no valid flow pixels"):
    metrics.flow_metrics(gt, gt, valid_mask=np.zeros(gt.shape[:3], bool))


# --------------------------------------------------------------------------------- keypoints


def _person(joints_xy, visible=None):
  """[1, 1, 17, 3] with the given joints first, the rest invisible at (0, 0)."""
  keypoints = np.zeros((1, 1, 17, 3), np.float32)
  keypoints[0, 0, :len(joints_xy), :2] = joints_xy
  keypoints[0, 0, :len(joints_xy), 2] = 1.0 if visible is None else visible
  return keypoints


def test_pck_by_hand():
  # Visible gt box spans x 0..100, y 0..50 -> size 100 -> threshold 0.2 * 100 = 20 px.
  gt = _person([(0, 0), (100, 50), (50, 25)])
  gt[0, 0, 5] = (1000.0, 1000.0, 0.0)  # Invisible: neither counted nor widening the box.
  pred = gt.copy()
  pred[0, 0, :3, :2] += [(6, 8), (12, 16), (15, 20)]  # Distances 10, 20 (on the edge), 25.
  pred[0, 0, :3, 2] = 1.0
  assert metrics.keypoint_pck(pred, gt) == {"pck": pytest.approx(2 / 3)}
  assert metrics.keypoint_pck(pred, gt, alpha=0.3) == {"pck": 1.0}
  pred[0, 0, 0, 2] = 0.0  # A joint the estimator did not find is a miss, wherever it lies.
  assert metrics.keypoint_pck(pred, gt) == {"pck": pytest.approx(1 / 3)}
  assert metrics.keypoint_pck(gt, gt) == {"pck": 1.0}


def test_pck_matches_persons_by_index_and_skips_zero_size_persons():
  first = _person([(0, 0), (10, 0)])
  second = _person([(50, 50), (60, 50)])
  gt = np.concatenate([first, second], axis=1)  # [1, 2, 17, 3]
  assert metrics.keypoint_pck(gt, gt)["pck"] == 1.0
  assert metrics.keypoint_pck(gt[:, ::-1], gt)["pck"] == 0.0  # Swapped persons.
  single_point = _person([(5, 5)])
  with pytest.raises(ValueError, match="no valid keypoints"):
    metrics.keypoint_pck(single_point, single_point)
  with_point = np.concatenate([first, single_point], axis=1)
  pred = with_point.copy()
  pred[0, 1, 0, :2] = (500, 500)  # The zero-size person is not counted at all.
  assert metrics.keypoint_pck(pred, with_point)["pck"] == 1.0


def test_pck_errors_are_clear():
  gt = np.zeros((2, 1, 17, 3), np.float32)
  with pytest.raises(ValueError, match=r"gt_keypoints must have layout \[T, P, 17, 3\]"):
    metrics.keypoint_pck(np.zeros((2, 1, 18, 3)), np.zeros((2, 1, 18, 3)))
  with pytest.raises(ValueError, match=r"pred_keypoints has shape \(2, 2, 17, 3\)"):
    metrics.keypoint_pck(np.zeros((2, 2, 17, 3)), gt)
  nan_pred = gt.copy()
  nan_pred[0, 0, 3, 0] = np.nan
  with pytest.raises(ValueError, match="pred_keypoints contains 1 NaN"):
    metrics.keypoint_pck(nan_pred, gt)


# ----------------------------------------------------------------------------- video quality


def _frames(*levels):
  return np.stack([np.full((2, 3, 3), level, np.uint8) for level in levels])


def test_temporal_flickering_by_hand():
  assert metrics.temporal_flickering(_frames(0, 51)) == {"temporal_flickering": 0.8}
  # Pair means 51 and 0 -> 25.5 -> (255 - 25.5) / 255 = 0.9.
  score = lambda video: metrics.temporal_flickering(video)["temporal_flickering"]  # noqa: E731
  assert score(_frames(0, 51, 51)) == pytest.approx(0.9)
  assert score(_frames(200, 10)) == pytest.approx(65 / 255)  # uint8 must not wrap: |10 - 200|.
  assert score(_frames(7, 7, 7)) == 1.0


def test_temporal_flickering_errors_are_clear():
  with pytest.raises(ValueError, match="must be uint8"):
    metrics.temporal_flickering(_frames(0, 1).astype(np.float32))
  with pytest.raises(ValueError, match="at least 2 frames"):
    metrics.temporal_flickering(_frames(0))
  with pytest.raises(ValueError, match=r"video must have layout \[T, H, W, 3\]"):
    metrics.temporal_flickering(np.zeros((2, 4, 4), np.uint8))


# ------------------------------------------------------------------ control fidelity, baselines


def _conditions():
  """One small ground truth per modality, in the project's value conventions."""
  rng = np.random.default_rng(1)
  instance_ids = np.zeros((2, 6, 6), np.int32)
  instance_ids[:, :3, :3], instance_ids[:, 3:, 2:] = 4, 9
  keypoints = np.concatenate([rng.uniform(10, 90, (2, 2, 17, 2)), np.ones((2, 2, 17, 1))], -1)
  return {
      "depth": rng.uniform(1.0, 10.0, (2, 6, 6)).astype(np.float32),
      "flow": rng.normal(0, 2, (2, 6, 6, 2)).astype(np.float32),
      "segmentation": instance_ids,
      "skeleton": keypoints.astype(np.float32),
  }


def test_control_fidelity_perfect_estimates_score_best():
  conditions = _conditions()
  depth = conditions["depth"]
  assert fidelity.control_fidelity("depth", depth, 1.0 / depth, max_depth=20.0) == pytest.approx(
      {"abs_rel": 0.0, "delta1": 1.0, "rmse": 0.0}, abs=1e-5)
  assert fidelity.control_fidelity("depth", depth, 2.0 * depth, max_depth=20.0,
                                   depth_kind="depth")["abs_rel"] < 1e-5
  assert fidelity.control_fidelity("flow", conditions["flow"], conditions["flow"]) == {
      "epe": 0.0, "outliers_3px": 0.0, "fl_kitti": 0.0}
  relabelled = np.where(conditions["segmentation"] == 4, 1, conditions["segmentation"] * 3)
  assert fidelity.control_fidelity("segmentation", conditions["segmentation"], relabelled) == {
      "miou": 1.0, "mask_map": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0}
  assert fidelity.control_fidelity("skeleton", conditions["skeleton"],
                                   conditions["skeleton"]) == {"pck": 1.0}


def test_control_fidelity_errors_are_clear():
  depth = _conditions()["depth"]
  with pytest.raises(ValueError, match="needs max_depth"):
    fidelity.control_fidelity("depth", depth, depth)
  with pytest.raises(ValueError, match="no control-fidelity metric for modality 'densepose'"):
    fidelity.control_fidelity("densepose", depth, depth)
  with pytest.raises(ValueError, match="unknown modality 'normals'"):
    fidelity.control_fidelity("normals", depth, depth)


def test_baselines_by_hand():
  # Constant disparity on gt [1, 2]: best constant depth 4/3 -> AbsRel 1/3 (first depth test).
  depth = baselines.baseline_metrics("depth", _video([[1.0, 2.0]]), max_depth=80.0)
  assert depth["constant_disparity"]["abs_rel"] == pytest.approx(1 / 3, abs=DEPTH_TOL)
  flow_gt = np.zeros((1, 1, 2, 2), np.float32)
  flow_gt[0, 0, 0] = (3.0, 4.0)  # |gt| = 5 and 0 -> zero flow EPE 5/2.
  assert baselines.baseline_metrics("flow", flow_gt)["zero_flow"]["epe"] == pytest.approx(2.5)
  # One mask over all 4 pixels: IoU 2/4 with gt 1 (its match), gt 2 stays unmatched (0).
  ids = np.array([[[1, 1, 2, 0]]], np.int32)
  segmentation = baselines.baseline_metrics("segmentation", ids)
  assert segmentation["single_mask"]["miou"] == pytest.approx(0.5 * 2 / 4)
  assert segmentation["empty"] == {"miou": 0.0, "mask_map": 0.0, "mask_ap50": 0.0,
                                   "mask_ap75": 0.0}
  # Image 100 x 100 -> centre (50, 50); box 40 x 10 -> threshold 8; distances 5, 5, 40.
  person = _person([(50, 45), (50, 55), (10, 50)])
  skeleton = baselines.baseline_metrics("skeleton", person, image_hw=(100, 100))
  assert skeleton == {"image_centre": {"pck": pytest.approx(2 / 3)}}
  with pytest.raises(ValueError, match="needs image_hw"):
    baselines.baseline_metrics("skeleton", person)


def test_video_baselines_static_is_best_and_noise_near_two_thirds():
  video = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  result = baselines.baseline_metrics("rgb", video)
  assert result["static_video"] == {"temporal_flickering": 1.0}
  # E|U - V| for independent uniform integers 0..255 is (256^2 - 1) / (3 * 256).
  expected_noise = 1.0 - (256**2 - 1) / (3 * 256) / 255
  assert result["uniform_noise"]["temporal_flickering"] == pytest.approx(expected_noise, abs=5e-3)


def test_every_result_is_plain_json():
  conditions = _conditions()
  results = {}
  for modality, gt in conditions.items():
    noisy = gt + 1 if modality != "segmentation" else np.roll(gt, 1, axis=2)
    results[modality] = {
        "model": fidelity.control_fidelity(modality, gt, noisy, max_depth=20.0),
        "baselines": baselines.baseline_metrics(modality, gt, max_depth=20.0,
                                                image_hw=(100, 100)),
    }
  video = np.zeros((3, 4, 4, 3), np.uint8)
  results["rgb"] = {"model": metrics.temporal_flickering(video),
                    "baselines": baselines.baseline_metrics("rgb", video)}
  assert json.loads(json.dumps(results)) == results

  def leaves(tree):
    return [x for v in tree.values() for x in (leaves(v) if isinstance(v, dict) else [v])]
  assert all(type(value) is float for value in leaves(results))
  table = report.format_markdown_table(results)
  assert table.count("\n") == 2 + 3 + 3 + 4 + 1 + 1


def test_markdown_table_by_hand():
  results = {
      "depth": {"model": {"abs_rel": 0.12345, "delta1": 0.9},
                "baselines": {"constant_disparity": {"abs_rel": 0.5, "delta1": 0.25}}},
      "segmentation": {"model": {"miou": 0.5},
                       "baselines": {"single_mask": {"miou": 0.1}, "empty": {"miou": 0.0}}},
      "custom": {"model": {"score": 1}},
  }
  assert report.format_markdown_table(results, digits=3) == (
      "| section | metric | model | baselines |\n"
      "|---|---|---|---|\n"
      "| depth | abs_rel ↓ | 0.123 | constant_disparity 0.500 |\n"
      "| depth | delta1 ↑ | 0.900 | constant_disparity 0.250 |\n"
      "| segmentation | miou ↑ | 0.500 | single_mask 0.100; empty 0.000 |\n"
      "| custom | score | 1.000 | – |\n")
  with pytest.raises(ValueError, match="results\\['depth'\\] must be a dict with a 'model'"):
    report.format_markdown_table({"depth": {"abs_rel": 0.1}})
