"""Modality videos: render ground truth -> decode back, on synthetic clips and hand-made inputs.

Round trips are measured with the project's evaluation protocol (unity_jax.eval.metrics), and
the decoders are also fed perturbed videos, as model outputs will be.
"""

import functools

import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import modality_render as mr
from unity_jax.data.synthetic import generate_clip
from unity_jax.data.synthetic import renderer
from unity_jax.eval import metrics

CLIP_SEEDS = ((source, seed) for source in constants.SOURCES for seed in (0, 1))
CLIP_SEEDS = tuple(CLIP_SEEDS)


@functools.lru_cache(maxsize=None)
def _clip(source, seed):
  return generate_clip(seed, source)


def _rgb_noise(video, amplitude, seed=0):
  """Uniform integer noise in [-amplitude, amplitude] per channel, clipped to uint8."""
  noise = np.random.default_rng(seed).integers(-amplitude, amplitude + 1, video.shape)
  return np.clip(video.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _isolated_keypoints(keypoints, height, width, radius):
  """Visible keypoints whose dot no other visible dot touches and the frame does not clip."""
  visible = keypoints[..., 2] > 0
  pixel = mr.round_to_pixel(keypoints[..., :2])
  isolated = visible.copy()
  for frame in range(len(keypoints)):
    points, mask = pixel[frame].reshape(-1, 2), visible[frame].ravel()
    gap = np.abs(points[:, None] - points[None]).max(-1)  # Chebyshev distance between dots
    gap[~mask] = np.iinfo(gap.dtype).max
    gap[:, ~mask] = np.iinfo(gap.dtype).max
    np.fill_diagonal(gap, np.iinfo(gap.dtype).max)
    clear = (gap.min(1) > 2 * radius).reshape(visible.shape[1:])
    inside = ((pixel[frame] >= radius) & (pixel[frame] < [width - radius, height - radius])).all(-1)
    isolated[frame] &= clear & inside
  return isolated


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("source,seed", CLIP_SEEDS)
def test_depth_round_trip_up_to_scale_and_shift(source, seed):
  clip = _clip(source, seed)
  decoded = mr.decode_modality("depth", clip["modalities"]["depth"])
  assert decoded.dtype == np.float32 and decoded.shape == clip["gt"]["depth"].shape
  result = metrics.depth_metrics(decoded, clip["gt"]["depth"], max_depth=renderer.FAR_DEPTH)
  assert result["abs_rel"] < 0.02
  # The decoded values are exactly the clip-normalised disparity up to colour quantisation.
  expected = mr.normalized_disparity(clip["gt"]["depth"])
  assert np.abs(decoded - expected).max() < 2.0 / 720


@pytest.mark.parametrize("source,seed", CLIP_SEEDS)
def test_flow_round_trip_epe(source, seed):
  clip = _clip(source, seed)
  gt_flow = clip["gt"]["flow"]
  assert np.linalg.norm(gt_flow, axis=-1).max() < mr.flow_max_magnitude(gt_flow.shape[2])
  decoded = mr.decode_modality("flow", clip["modalities"]["flow"])
  assert decoded.dtype == np.float32 and decoded.shape == gt_flow.shape
  assert metrics.flow_metrics(decoded, gt_flow)["epe"] < 0.5


@pytest.mark.parametrize("source,seed", CLIP_SEEDS)
def test_segmentation_round_trip_is_exact(source, seed):
  clip = _clip(source, seed)
  decoded = mr.decode_modality("segmentation", clip["modalities"]["segmentation"])
  assert decoded.dtype == np.int32
  np.testing.assert_array_equal(decoded, clip["gt"]["instance"])


@pytest.mark.parametrize("source,seed", CLIP_SEEDS)
def test_densepose_round_trip(source, seed):
  clip = _clip(source, seed)
  part_index, uv = mr.decode_modality("densepose", clip["modalities"]["densepose"])
  np.testing.assert_array_equal(part_index, clip["gt"]["part_index"])
  assert uv.dtype == np.float32
  assert np.abs(uv - clip["gt"]["uv"]).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("source,seed", CLIP_SEEDS)
def test_skeleton_round_trip_recovers_separated_keypoints_exactly(source, seed):
  clip = _clip(source, seed)
  keypoints = clip["gt"]["keypoints"]
  num_frames, num_persons = keypoints.shape[:2]
  decoded = mr.decode_modality("skeleton", clip["modalities"]["skeleton"],
                               num_persons=num_persons)
  assert decoded.shape == keypoints.shape and decoded.dtype == np.float32
  height, width = clip["rgb"].shape[1:3]
  isolated = _isolated_keypoints(keypoints, height, width, mr.skeleton_dot_radius(height, width))
  if clip["person_count"]:  # 64 px people are small: many dots touch, but never all of them.
    assert isolated.any()
  np.testing.assert_array_equal(decoded[..., :2][isolated],
                                mr.round_to_pixel(keypoints[..., :2][isolated]))
  assert (decoded[..., 2][isolated] == 1).all()
  # Every decoded joint is a visible one (overlapping dots may hide some, never invent any).
  assert not (decoded[..., 2] > 0)[keypoints[..., 2] == 0].any()


def test_skeleton_round_trip_on_separated_random_keypoints():
  rng = np.random.default_rng(0)
  height, width, num_persons = 96, 128, mr.MAX_SKELETON_PERSONS
  # Joints on a shuffled lattice 6 px apart (dots are 3x3 at this size), half of them visible.
  lattice = np.stack(np.meshgrid(np.arange(4, width - 4, 6), np.arange(4, height - 4, 6)), -1)
  keypoints = np.zeros((3, num_persons, 17, 3), np.float32)
  for frame in range(3):
    chosen = rng.permutation(lattice.reshape(-1, 2))[:num_persons * 17]
    jitter = rng.uniform(-0.49, 0.49, (num_persons, 17, 2))  # rounds back to the lattice point
    keypoints[frame, ..., :2] = chosen.reshape(num_persons, 17, 2) + jitter
    keypoints[frame, ..., 2] = rng.random((num_persons, 17)) < 0.5
  video = mr.render_modality("skeleton", {"keypoints": keypoints,
                                          "depth": np.ones((3, height, width), np.float32)})
  for decoded in (mr.decode_modality("skeleton", video, num_persons=num_persons),
                  mr.decode_modality("skeleton", _rgb_noise(video, 25), num_persons=num_persons)):
    visible = keypoints[..., 2] > 0
    np.testing.assert_array_equal(decoded[..., 2], visible.astype(np.float32))
    np.testing.assert_array_equal(decoded[..., :2][visible],
                                  mr.round_to_pixel(keypoints[..., :2][visible]))
    assert (decoded[~visible] == 0).all()


def test_skeleton_without_person_is_black_and_decodes_to_one_empty_row():
  keypoints = np.zeros((2, 1, 17, 3), np.float32)
  video = mr.render_modality("skeleton", {"keypoints": keypoints,
                                          "instance": np.zeros((2, 16, 16), np.int32)})
  assert video.shape == (2, 16, 16, 3) and not video.any()
  np.testing.assert_array_equal(mr.decode_modality("skeleton", video), keypoints)


def _random_flow(seed, height, width):
  """float [2, height, width, 2] flows of uniform direction and magnitude up to the wheel's
  limit for `width`; returns (flow, magnitude [2, height, width], limit)."""
  rng = np.random.default_rng(seed)
  limit = mr.flow_max_magnitude(width)
  angle = rng.uniform(-np.pi, np.pi, (2, height, width))
  magnitude = rng.uniform(0, limit, (2, height, width))
  return np.stack([np.cos(angle), np.sin(angle)], -1) * magnitude[..., None], magnitude, limit


def test_flow_wheel_saturates_and_decodes_synthetic_flows():
  flow, magnitude, limit = _random_flow(1, 32, 64)
  decoded = mr.decode_modality("flow", mr.render_modality("flow", {"flow": flow}))
  assert np.linalg.norm(decoded - flow, axis=-1).max() < 0.15
  # Zero flow is white; flows beyond the limit keep their direction at the maximum magnitude.
  assert (mr.render_modality("flow", {"flow": np.zeros((1, 2, 2, 2))}) == 255).all()
  too_long = flow * (3 * limit / np.maximum(magnitude, 1e-6))[..., None]
  clipped = mr.decode_modality("flow", mr.render_modality("flow", {"flow": too_long}))
  expected = too_long / np.linalg.norm(too_long, axis=-1, keepdims=True) * limit
  assert np.linalg.norm(clipped - expected, axis=-1).max() < 0.15
  # The saturation scale follows the width and can be overridden explicitly.
  assert mr.flow_max_magnitude(256) == 4 * mr.flow_max_magnitude(64)
  custom = mr.decode_modality("flow", mr.render_modality("flow", {"flow": flow / 4},
                                                         flow_max_magnitude_px=limit / 4),
                              flow_max_magnitude_px=limit / 4)
  assert np.linalg.norm(custom - flow / 4, axis=-1).max() < 0.05


def test_depth_colour_map_is_bright_when_near_and_invertible():
  depth = np.linspace(0.5, 40.0, 720, dtype=np.float32).reshape(1, 8, 90)
  video = mr.render_modality("depth", {"depth": depth})
  luminance = video.astype(np.float64) @ [0.2126, 0.7152, 0.0722]
  assert np.all(np.diff(luminance.ravel()) <= 0)  # depth increases -> never brighter
  assert luminance.ravel()[0] > 250 and luminance.ravel()[-1] < 5
  decoded = mr.decode_modality("depth", video)
  np.testing.assert_allclose(decoded, mr.normalized_disparity(depth), atol=1.5 / 720)
  # A constant depth has no scale: it renders black instead of dividing by zero.
  assert not mr.render_modality("depth", {"depth": np.full((1, 2, 2), 3.0)}).any()


def test_segmentation_palette_covers_every_id_and_survives_noise():
  ids = np.arange(len(mr.SEGMENTATION_PALETTE), dtype=np.int32).reshape(1, 8, 8)
  video = mr.render_modality("segmentation", {"instance": ids})
  assert (video[0, 0, 0] == 0).all()
  assert len(np.unique(mr.SEGMENTATION_PALETTE, axis=0)) == len(mr.SEGMENTATION_PALETTE)
  np.testing.assert_array_equal(mr.decode_modality("segmentation", _rgb_noise(video, 40)), ids)
  with pytest.raises(ValueError, match="instance ids"):
    mr.render_modality("segmentation", {"instance": ids + 1})


def test_lossy_videos_decode_close_to_ground_truth():
  clip = _clip("two_person", 0)
  gt, videos = clip["gt"], clip["modalities"]
  depth = mr.decode_modality("depth", _rgb_noise(videos["depth"], 3))
  assert metrics.depth_metrics(depth, gt["depth"], renderer.FAR_DEPTH)["abs_rel"] < 0.05
  flow = mr.decode_modality("flow", _rgb_noise(videos["flow"], 3))
  assert metrics.flow_metrics(flow, gt["flow"])["epe"] < 0.5
  part_index, uv = mr.decode_modality("densepose", _rgb_noise(videos["densepose"], 4))
  np.testing.assert_array_equal(part_index, gt["part_index"])
  assert np.abs(uv - gt["uv"]).max() <= 4.5 / 255


def test_joint_and_limb_colours_are_distinct():
  joints = mr.SKELETON_JOINT_COLOURS.reshape(-1, 3)
  colours = np.concatenate([[[0, 0, 0]], joints, mr.SKELETON_LIMB_COLOURS])
  assert len(np.unique(colours, axis=0)) == len(colours)
  assert mr.SKELETON_LIMB_COLOURS.shape == (len(mr.COCO_LIMBS), 3)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown modality"):
    mr.render_modality("normals", {})
  with pytest.raises(KeyError, match="depth"):
    mr.render_modality("depth", {"flow": np.zeros((1, 2, 2, 2))})
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    mr.decode_modality("flow", np.zeros((2, 4, 4)))
  with pytest.raises(ValueError, match="part_index"):
    mr.render_modality("densepose", {"part_index": np.full((1, 2, 2), 25),
                                     "uv": np.zeros((1, 2, 2, 2))})


def test_mirror_flow_video_is_the_rendering_of_the_flipped_flow():
  """Horizontal flip augmentation of flow: columns mirrored and u negated, on the uint8 video."""
  flow, _, _ = _random_flow(2, 16, 64)
  flipped = flow[:, :, ::-1] * np.array([-1.0, 1.0])
  mirrored = mr.mirror_flow_video(mr.render_modality("flow", {"flow": flow}))
  direct = mr.render_modality("flow", {"flow": flipped})
  assert mirrored.dtype == np.uint8 and mirrored.shape == direct.shape
  assert np.abs(mirrored.astype(int) - direct).max() <= 4
  assert np.linalg.norm(mr.decode_modality("flow", mirrored) - flipped, axis=-1).max() < 0.15
  # Left and right motions swap colours: a rightward flow becomes the leftward one's colour.
  right = mr.render_modality("flow", {"flow": np.full((1, 1, 2, 2), [2.0, 0.0])})
  left = mr.render_modality("flow", {"flow": np.full((1, 1, 2, 2), [-2.0, 0.0])})
  np.testing.assert_array_equal(mr.mirror_flow_video(right), left)
