"""Measures OpenUni record size and encode/decode speed per video codec (docs/openuni_format.md).

  python -m unity_jax.data.codec_bench [--large] [--repeats N] [--out RESULT.json]

Contents: synthetic-world clips at the tiny (9x32x32) and default (17x64x64) shapes, and with
--large the release shape (33x256x256, ~8 s to generate), plus a camera-like proxy (a moving
smooth random texture passed through libx264, as decoded real videos are) at 17x64x64 (and
33x256x256 with --large). Each record holds RGB + five modality videos; "gt" rows add the
synthetic ground truth. Decode = `decode_record` of the whole record, one process.
"""

import argparse
import json
import os
import tempfile
import time

import imageio.v3 as iio
import ml_dtypes
import numpy as np

from unity_jax import constants
from unity_jax.data import record


def camera_like_clip(num_frames: int, size: int, seed: int = 0) -> dict:
  """A clip whose six videos are smooth moving textures with real H.264 decode artefacts."""
  rng = np.random.default_rng(seed)
  videos = []
  for _ in range(1 + len(constants.MODALITIES)):
    field = rng.normal(size=(2 * size, 2 * size + 2 * num_frames, 3))
    spectrum = np.fft.fft2(field, axes=(0, 1))
    ky = np.fft.fftfreq(field.shape[0])[:, None]
    kx = np.fft.fftfreq(field.shape[1])[None, :]
    spectrum /= (1e-3 + ky**2 + kx**2)[..., None]  # ~1/f^2 power: natural-image-like.
    image = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    image = 255 * (image - image.min()) / np.ptp(image)
    frames = np.stack([image[::2, 2 * t: 2 * t + 2 * size: 2] for t in range(num_frames)])
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "v.mp4")
      iio.imwrite(path, frames.astype(np.uint8), fps=8, codec="libx264")
      videos.append(iio.imread(path)[:num_frames])
  return {"id": "camera", "source": "general", "caption": "proxy", "person_count": -1,
          "segmentation_targets": "", "rgb": videos[0],
          "modalities": dict(zip(constants.MODALITIES, videos[1:])),
          "available": {name: True for name in constants.MODALITIES}}


def with_latents(clip: dict, seed: int = 0) -> dict:
  """Adds Wan2.2-TI2V-shaped latents (bf16 [T/4+1, H/16, W/16, 48] per stream) and a 128-token
  umT5-sized caption embedding (bf16 [128, 4096]), as precomputed for large runs."""
  rng = np.random.default_rng(seed)
  frames, height, width = clip["rgb"].shape[:3]
  shape = ((frames - 1) // 4 + 1, height // 16, width // 16, 48)
  latents = {name: rng.normal(size=shape).astype(ml_dtypes.bfloat16)
             for name in ("rgb",) + constants.MODALITIES}
  embedding = rng.normal(size=(128, 4096)).astype(ml_dtypes.bfloat16)
  return {**clip, "latents": latents, "caption_embedding": embedding}


def measure(clip: dict, codec: str, repeats: int, skip: tuple[str, ...] = ()) -> dict:
  started = time.perf_counter()
  data = record.encode_record(clip, video_codec=codec)
  encode = time.perf_counter() - started
  started = time.perf_counter()
  for _ in range(repeats):
    decoded = record.decode_record(data, skip=skip)
  decode = (time.perf_counter() - started) / repeats
  raw = sum(a.nbytes for a in [decoded.get("rgb"), decoded.get("caption_embedding"),
                               *decoded.get("modalities", {}).values(),
                               *decoded.get("latents", {}).values(),
                               *decoded.get("gt", {}).values()] if a is not None)
  return {"codec": codec, "record_kib": round(len(data) / 1024, 1),
          "ratio": round(raw / len(data), 2) if not skip else None,
          "encode_ms": round(1e3 * encode, 2),
          "decode_ms": round(1e3 * decode, 3), "decode_clips_per_s": round(1 / decode, 1),
          "decode_mb_per_s": round(raw / decode / 1e6, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--large", action="store_true", help="also the 33x256x256 release shape")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", help="write the results as JSON")
  args = parser.parse_args()
  from unity_jax.data.synthetic import generate_clip  # pylint: disable=g-import-not-at-top
  shapes = [(9, 32), (17, 64)] + ([(33, 256)] if args.large else [])
  contents = []
  for frames, size in shapes:
    clip = generate_clip(0, "two_person", num_frames=frames, height=size, width=size)
    contents.append((f"synthetic {frames}x{size}x{size} + gt", clip))
    contents.append((f"synthetic {frames}x{size}x{size}", {k: v for k, v in clip.items()
                                                           if k != "gt"}))
  for frames, size in [(17, 64)] + ([(33, 256)] if args.large else []):
    contents.append((f"camera-like {frames}x{size}x{size}", camera_like_clip(frames, size)))
  cases = [(name, clip, codec, ()) for name, clip in contents for codec in record.VIDEO_CODECS]
  if args.large:
    latent_clip = with_latents(contents[-1][1])
    cases.append(("latents only, 33x256x256 (skip pixels)", latent_clip, "auto",
                  ("rgb", "modalities", "gt")))
  results = []
  print(f"{'content':40s} {'codec':5s} {'KiB':>8s} {'ratio':>6s} {'enc ms':>8s} {'dec ms':>8s}"
        f" {'clips/s':>8s} {'MB/s':>7s}")
  for name, clip, codec, skip in cases:
    repeats = max(1, args.repeats // (16 if "256" in name and not skip else 1))
    row = {"content": name, **measure(clip, codec, repeats, skip)}
    results.append(row)
    print(f"{name:40s} {codec:5s} {row['record_kib']:8.1f} {row['ratio'] or 0:6.2f} "
          f"{row['encode_ms']:8.2f} {row['decode_ms']:8.3f} {row['decode_clips_per_s']:8.1f} "
          f"{row['decode_mb_per_s']:7.1f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
