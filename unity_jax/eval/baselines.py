"""Trivial baselines, so that every metric is reported next to a number that needs no model.

Each baseline is a prediction built from the ground truth's shape only (never its values, except
the alignment every depth prediction gets), scored with the same metric as the model.
"""

import numpy as np

from unity_jax.eval import fidelity
from unity_jax.eval import metrics

VIDEO_QUALITY = "rgb"
"""Name used for the generated video itself (temporal flickering) next to the modalities."""


def baseline_metrics(modality: str, gt_values: np.ndarray, *, max_depth: float | None = None,
                     image_hw: tuple[int, int] | None = None, seed: int = 0) -> dict:
  """Scores the trivial predictions of a modality against its ground truth.

  Args:
    modality: "depth", "flow", "segmentation", "skeleton", or "rgb" (temporal flickering).
    gt_values: the ground truth in the layout of that metric (see fidelity.control_fidelity);
      for "rgb" a uint8 [T, H, W, 3] video whose shape the baselines copy.
    max_depth: metres, required for depth.
    image_hw: (height, width) in pixels, required for skeleton (keypoints carry no image size).
    seed: seed of the noise video for "rgb".

  Returns:
    {baseline name: {metric name: float}}:
      depth         constant_disparity   a constant prediction, aligned like any other (the fit
                                         makes it the single best constant, 1 / mean(1 / gt))
      flow          zero_flow            no motion anywhere (EPE = mean |gt|)
      segmentation  single_mask          every pixel of every frame one instance
                    empty                no instance at all (scores 0)
      skeleton      image_centre         every joint at (W / 2, H / 2), marked visible
      rgb           static_video         the first frame repeated (score 1.0, the best possible)
                    uniform_noise        i.i.d. uniform uint8 pixels (about 2/3)
  """
  gt_values = np.asarray(gt_values)
  if modality == VIDEO_QUALITY:
    return _video_baselines(gt_values, seed)
  fidelity.check_fidelity_modality(modality)
  score = lambda prediction: fidelity.control_fidelity(  # noqa: E731
      modality, gt_values, prediction, max_depth=max_depth)
  if modality == "depth":
    return {"constant_disparity": score(np.ones(gt_values.shape, np.float32))}
  if modality == "flow":
    return {"zero_flow": score(np.zeros(gt_values.shape, np.float32))}
  if modality == "segmentation":
    return {"single_mask": score(np.ones(gt_values.shape, np.int32)),
            "empty": score(np.zeros(gt_values.shape, np.int32))}
  if image_hw is None or len(image_hw) != 2:
    raise ValueError(f"baseline_metrics('skeleton', ...) needs image_hw=(height, width), "
                     f"got {image_hw!r}")
  height, width = image_hw
  centre = np.zeros(gt_values.shape, np.float32)
  centre[..., 0], centre[..., 1], centre[..., 2] = width / 2, height / 2, 1.0
  return {"image_centre": score(centre)}


def _video_baselines(video: np.ndarray, seed: int) -> dict:
  """Flickering of a static copy and of uniform noise with the shape of uint8 [T, H, W, 3]."""
  metrics.temporal_flickering(video)  # Validates layout, dtype and frame count.
  static = np.broadcast_to(video[:1], video.shape)
  noise = np.random.default_rng(seed).integers(0, 256, size=video.shape, dtype=np.uint8)
  return {"static_video": metrics.temporal_flickering(static),
          "uniform_noise": metrics.temporal_flickering(noise)}
