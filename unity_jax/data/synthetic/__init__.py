"""The embedded synthetic world: procedural clips with exact ground truth for every modality.

`generate_clip(seed, source)` samples a scene (world.py: people with COCO skeletons and
DensePose-like parts, rigid objects, a textured ground, sky and a moving pinhole camera),
ray-casts it (renderer.py), renders every modality as a video (data/modality_render.py) and
writes a caption (captions.py). It is a pure, picklable top-level function: parallel callers
just map it over seeds.

Seed convention: training clips use seeds 0, 1, 2, ...; the held-out evaluation split is the same
generator with seeds EVAL_SEED_OFFSET + i (see `eval_seed`). Seeds are per source: the same seed
gives different scenes for different sources.

Ground-truth conventions: pixel (row i, col j) has its centre at (x=j, y=i); depth is the camera
z in metres (sky = renderer.FAR_DEPTH); instance 0 is sky and ground, persons have instances
1..P in keypoint-row order, then objects; semantic ids index primitives.SEMANTIC_CLASSES
(0 sky, 1 ground, 2 person, 3 ball, 4 box, 5 cylinder); DensePose part ids are listed in people.py.
"""

import numpy as np

from unity_jax import constants
from unity_jax.data import modality_render
from unity_jax.data.synthetic import captions
from unity_jax.data.synthetic import renderer
from unity_jax.data.synthetic import world
from unity_jax.data.synthetic.primitives import SEMANTIC_CLASSES

EVAL_SEED_OFFSET = 10**6
"""Evaluation clips use seeds EVAL_SEED_OFFSET + i; training seeds stay below it."""
GT_KEYS = ("depth", "flow", "instance", "semantic", "keypoints", "part_index", "uv")
_PERSON_MODALITIES = ("skeleton", "densepose")

__all__ = ["EVAL_SEED_OFFSET", "GT_KEYS", "SEMANTIC_CLASSES", "eval_seed", "generate_clip"]


def eval_seed(index: int) -> int:
  """Seed of the `index`-th clip of the held-out evaluation split."""
  return EVAL_SEED_OFFSET + index


def generate_clip(seed: int, source: str, num_frames: int = 17, height: int = 64,
                  width: int = 64) -> dict:
  """Generates one clip of `source` (constants.SOURCES), deterministically from `seed`.

  Returns:
    {"id": "synth-{source}-{seed}", "source", "caption", "person_count",
     "segmentation_targets", "rgb": uint8 [T, H, W, 3],
     "modalities": {name: uint8 [T, H, W, 3] for constants.MODALITIES},
     "available": {name: bool} (skeleton/densepose False without people),
     "gt": {"depth": float32 [T, H, W], "flow": float32 [T, H, W, 2],
            "instance": int32 [T, H, W], "semantic": int32 [T, H, W],
            "keypoints": float32 [T, max(P, 1), 17, 3], "part_index": uint8 [T, H, W],
            "uv": float32 [T, H, W, 2]}}
  """
  scene = world.sample_scene(seed, source, num_frames, height, width)
  rendered = renderer.render_scene(scene)
  gt = {key: rendered[key] for key in GT_KEYS}
  person_count = scene.person_count
  return {
      "id": f"synth-{source}-{seed}",
      "source": source,
      "caption": captions.caption(scene),
      "person_count": person_count,
      "segmentation_targets": captions.segmentation_targets(scene),
      "rgb": rendered["rgb"],
      "modalities": {name: modality_render.render_modality(name, gt)
                     for name in constants.MODALITIES},
      "available": {name: person_count > 0 or name not in _PERSON_MODALITIES
                    for name in constants.MODALITIES},
      "gt": gt,
  }
