"""Reading and writing sample videos, and side-by-side grids (RGB | modality | ground truth).

Videos are uint8 [T, H, W, 3] everywhere. Files:
  .mp4   H.264 (libx264, yuv420p) through imageio + imageio-ffmpeg's bundled ffmpeg; odd sizes are
         padded with black to even ones (yuv420p needs even sizes). Lossy: fine for viewing and
         RGB inputs, but chroma subsampling blurs the flat colours of segmentation/skeleton
         videos, so keep those as .npy when they are model inputs.
  .gif   lossless palette video (small clips), .npy raw array (exact), .png a frame sheet (frames
         stacked top to bottom).
"""

import contextlib
import os
import warnings

import numpy as np

from unity_jax import io_utils

VIDEO_SUFFIXES = (".mp4", ".gif", ".npy", ".png")


def _suffix(path: str) -> str:
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in VIDEO_SUFFIXES:
    raise ValueError(f"{path}: unsupported video file type {suffix!r}; expected one of "
                     f"{list(VIDEO_SUFFIXES)}")
  return suffix


def as_video(video, name: str = "video") -> np.ndarray:
  """Checks uint8 [T, H, W, 3] (an RGBA or gray video is converted) and returns it as numpy."""
  video = np.asarray(video)
  if video.ndim == 3:  # gray [T, H, W]
    video = np.repeat(video[..., None], 3, axis=-1)
  if video.ndim != 4 or video.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{name}: expected a video uint8 [T, H, W, 3], got shape {video.shape}")
  if video.dtype != np.uint8:
    raise ValueError(f"{name}: expected dtype uint8 (values 0..255), got {video.dtype}; convert "
                     "float videos in [-1, 1] with PixelCodec.to_uint8")
  if video.shape[-1] == 1:
    video = np.repeat(video, 3, axis=-1)
  return video[..., :3]


@contextlib.contextmanager
def _ffmpeg_subprocess():
  """imageio-ffmpeg runs ffmpeg through subprocess (fork, then exec at once: no Python code runs
  in the child), which JAX's at-fork hook warns about needlessly; silence just that warning."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    yield


def read_video(path: str) -> np.ndarray:
  """uint8 [T, H, W, 3] from .mp4 / .gif / .npy (a .png frame sheet cannot be split back)."""
  suffix = _suffix(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"video file {path} does not exist")
  if suffix == ".npy":
    return as_video(np.load(path), path)
  if suffix == ".png":
    raise ValueError(f"{path}: a .png frame sheet is an output format; read videos from "
                     ".mp4, .gif or .npy")
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  with _ffmpeg_subprocess():
    return as_video(iio.imread(path), path)


def write_video(path: str, video, fps: int = 8) -> str:
  """Writes uint8 [T, H, W, 3] to `path` (type from the suffix, see the module docstring)."""
  video = as_video(video, path)
  suffix = _suffix(path)
  # Encoded into a temp file with the same suffix (formats are chosen by it), then renamed: a
  # failed encode (or a kill) leaves the previous video, not a truncated one.
  with io_utils.atomic_path(path) as tmp:
    if suffix == ".npy":
      np.save(tmp, video)
      return path
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    if suffix == ".png":
      iio.imwrite(tmp, frame_sheet(video))
    elif suffix == ".gif":
      iio.imwrite(tmp, video, duration=1000 / fps, loop=0)
    else:
      pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
      video = np.pad(video, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)])
      with _ffmpeg_subprocess():
        iio.imwrite(tmp, video, fps=fps, codec="libx264", macro_block_size=1)
  return path


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of [T, H, W, 3] by an integer factor (tiny clips)."""
  if factor == 1:
    return video
  return video.repeat(factor, axis=1).repeat(factor, axis=2)


def side_by_side(panels, *, scale: int = 1, gap: int = 2, labels=None) -> np.ndarray:
  """Panels uint8 [T, H, W, 3] (same T and H) side by side: [T, H', ΣW' + gaps, 3].

  `labels` (one string per panel) adds a caption strip above the panels.
  """
  panels = [upscale(as_video(p, f"panel {i}"), scale) for i, p in enumerate(panels)]
  frames, height = panels[0].shape[:2]
  for i, panel in enumerate(panels):
    if panel.shape[:2] != (frames, height):
      raise ValueError(f"side_by_side: panel {i} has {panel.shape[0]} frames of height "
                       f"{panel.shape[1]}, panel 0 has {frames} of height {height}")
  spacer = np.full((frames, height, gap, 3), 255, np.uint8)
  pieces = []
  for panel in panels:
    pieces += [panel, spacer]
  grid = np.concatenate(pieces[:-1], axis=2)
  if labels is not None:
    widths = [p.shape[2] for p in panels]
    strip = _label_strip(labels, widths, gap)
    grid = np.concatenate([np.broadcast_to(strip, (frames, *strip.shape)), grid], axis=1)
  return np.ascontiguousarray(grid)


def write_grid(path: str, panels, *, labels=None, scale: int = 1, gap: int = 2,
               fps: int = 8) -> str:
  """Writes panels side by side (see side_by_side); a .png frame sheet is labelled once on top
  rather than above every frame."""
  if _suffix(path) != ".png" or labels is None:
    return write_video(path, side_by_side(panels, scale=scale, gap=gap, labels=labels), fps=fps)
  sheet = frame_sheet(side_by_side(panels, scale=scale, gap=gap), gap)
  widths = [p.shape[2] * scale for p in panels]
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  with io_utils.atomic_path(path) as tmp:
    iio.imwrite(tmp, np.concatenate([_label_strip(labels, widths, gap), sheet], axis=0))
  return path


def _label_strip(labels, widths, gap) -> np.ndarray:
  """White strip [12, ΣW + gaps, 3] with each label drawn in black over its panel."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  if len(labels) != len(widths):
    raise ValueError(f"side_by_side: {len(labels)} labels for {len(widths)} panels")
  total = sum(widths) + gap * (len(widths) - 1)
  image = Image.new("RGB", (total, 12), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  left = 0
  for label, width in zip(labels, widths):
    draw.text((left + 1, 0), str(label), fill=(0, 0, 0))
    left += width + gap
  return np.asarray(image)


def frame_sheet(video: np.ndarray, gap: int = 2) -> np.ndarray:
  """[T, H, W, 3] -> one image [T·H + (T−1)·gap, W, 3], frames top to bottom."""
  video = as_video(video)
  spacer = np.full((gap, video.shape[2], 3), 255, np.uint8)
  rows = []
  for frame in video:
    rows += [frame, spacer]
  return np.concatenate(rows[:-1], axis=0)
