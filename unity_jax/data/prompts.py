"""Modality-type prompts for the in-context learner (C_m, the modality stream's text).

The paper gives the modality stream its own prompt describing what the stream is ("depth map
visualization ..."); for segmentation the prompt may name the targets ("segmentation of two
persons"). These templates are used identically in training and sampling.
"""

from unity_jax import constants

_TEMPLATES = {
    "depth": "depth map visualization, near is bright and far is dark",
    "flow": "optical flow visualization, colour wheel encodes motion direction and speed",
    "segmentation": "segmentation masks of {targets}, one flat colour per instance",
    "skeleton": "human skeleton keypoints drawn as coloured limbs on black",
    "densepose": "densepose visualization, body part index and uv coordinates as colours",
}
DEFAULT_SEGMENTATION_TARGETS = "all objects and persons"


def modality_prompt(modality: str, targets: str | None = None) -> str:
  """Returns the C_m prompt for `modality`; `targets` fills the segmentation template.

  `modality` may be "none" (RGB-only samples), which gives the empty prompt.
  """
  if modality == "none":
    return ""
  constants.modality_id(modality)  # Validates the name with a clear error.
  template = _TEMPLATES[modality]
  return template.format(targets=targets or DEFAULT_SEGMENTATION_TARGETS)
