"""Random clips that follow the OpenUni clip contract (schema.py), for tests and benchmarks.

Content is noise: use it to exercise formats and pipelines, not models. The real procedural
world lives in `unity_jax.data.synthetic`.
"""

import ml_dtypes
import numpy as np

from unity_jax import constants


def fake_clip(seed: int = 0, source: str = "general", num_frames: int = 5, height: int = 8,
              width: int = 8, with_gt: bool = True, with_latents: bool = False) -> dict:
  """Returns a clip dict with random arrays of the contract's shapes and dtypes.

  person_count is 1 or 2 (seeded); availability alternates with the seed; latents (optional)
  are bfloat16 [ceil(T/4), H/8, W/8, 4] plus a float32 [6, 16] caption embedding.
  """
  rng = np.random.default_rng(seed)
  shape = (num_frames, height, width)
  persons = int(rng.integers(1, 3))

  def video():
    return rng.integers(0, 256, shape + (3,), dtype=np.uint8)

  clip = {
      "id": f"fake-{source}-{seed:06d}",
      "source": source,
      "caption": f"random clip {seed} from {source}",
      "person_count": persons,
      "segmentation_targets": "one person" if persons == 1 else "two persons",
      "rgb": video(),
      "modalities": {name: video() for name in constants.MODALITIES},
      "available": {name: bool((seed + k) % 3) for k, name in enumerate(constants.MODALITIES)},
  }
  if with_gt:
    clip["gt"] = {
        "depth": rng.uniform(0.1, 20.0, shape).astype(np.float32),
        "flow": rng.normal(size=shape + (2,)).astype(np.float32),
        "instance": rng.integers(0, 4, shape, dtype=np.int32),
        "semantic": rng.integers(0, 8, shape, dtype=np.int32),
        "keypoints": rng.uniform(size=(num_frames, persons, 17, 3)).astype(np.float32),
        "part_index": rng.integers(0, 25, shape, dtype=np.uint8),
        "uv": rng.uniform(size=shape + (2,)).astype(np.float32),
    }
  if with_latents:
    latent_shape = ((num_frames + 3) // 4, max(height // 8, 1), max(width // 8, 1), 4)
    clip["latents"] = {name: rng.normal(size=latent_shape).astype(ml_dtypes.bfloat16)
                       for name in ("rgb",) + constants.MODALITIES}
    clip["caption_embedding"] = rng.normal(size=(6, 16)).astype(np.float32)
  return clip
