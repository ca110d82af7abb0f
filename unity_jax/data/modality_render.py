"""Ground truth <-> RGB-like modality videos (every modality is shown to the model as a video).

`render_modality(name, gt)` turns ground truth into uint8 [T, H, W, 3] videos and
`decode_modality(name, video)` turns such videos, also lossy ones such as model outputs, back into
numbers (nearest colour, never exact-match lookups):

  depth         normalised disparity (1/depth, min..max of the clip -> 0..1) through an invertible
                dark-to-bright colour map (near is bright). Decodes to that normalised disparity,
                i.e. disparity up to scale and shift.
  flow          Middlebury/RAFT colour wheel (hue = direction, saturation = speed) with a fixed
                maximum magnitude (flow_max_magnitude(width) pixels; longer flows saturate) and
                a square-root magnitude curve (FLOW_MAGNITUDE_GAMMA) so small motions show.
  segmentation  a fixed palette indexed by instance id (0 = background = black).
  skeleton      COCO limbs as coloured lines, then each visible joint as a square dot of a colour
                unique to (person row, joint) centred on its rounded pixel, on black. Decodes joints
                by colour (median of the dot's pixels); invisible joints decode to zeros.
  densepose     IUV as DensePose stores it: R = part index * 10, G = U * 255, B = V * 255.

Pixel (row i, col j) has its centre at (x=j, y=i); keypoints are drawn at `round_to_pixel(x)`.
"""

from typing import Mapping

import numpy as np

from unity_jax import constants

# ---- depth -------------------------------------------------------------------------------------
DEPTH_COLORMAP_KNOTS = np.array(
    [[0, 0, 0], [70, 0, 140], [190, 20, 100], [250, 120, 10], [255, 230, 120], [255, 255, 255]],
    np.float64)
"""Piecewise-linear colour map (RGB knots, far -> near) with strictly increasing luminance; the
normalised disparity is the arc-length position along it, so every step of ~1/720 is visible."""
_DEPTH_SEGMENT_LENGTHS = np.linalg.norm(np.diff(DEPTH_COLORMAP_KNOTS, axis=0), axis=1)
_DEPTH_ARC = np.concatenate([[0.0], np.cumsum(_DEPTH_SEGMENT_LENGTHS)])
MIN_DEPTH = 1e-3

# ---- flow --------------------------------------------------------------------------------------
FLOW_MAX_MAGNITUDE = 16.0
"""Flow (pixels) that maps to full saturation in a FLOW_REFERENCE_WIDTH-wide video."""
FLOW_REFERENCE_WIDTH = 64
FLOW_MAGNITUDE_GAMMA = 0.5
"""Saturation = (|flow| / max) ** gamma: the usual 1-3 px motions get visible colours while the
range still reaches the fast close-ups (the wheel itself is RAFT's)."""


def flow_max_magnitude(width: int) -> float:
  """Saturating flow magnitude in pixels for videos `width` pixels wide (scales with width)."""
  return FLOW_MAX_MAGNITUDE * width / FLOW_REFERENCE_WIDTH


def _colour_wheel() -> np.ndarray:
  """The Middlebury colour wheel as in RAFT's flow_viz.make_colorwheel: uint8-valued [55, 3]."""
  segments = ((15, (255, 0, 0), 1), (6, (255, 255, 0), 0), (4, (0, 255, 0), 2),
              (11, (0, 255, 255), 1), (13, (0, 0, 255), 0), (6, (255, 0, 255), 2))
  rows = []
  for count, start, channel in segments:  # `channel` ramps up or down from `start`.
    ramp = np.floor(255 * np.arange(count) / count)
    block = np.tile(np.asarray(start, np.float64), (count, 1))
    block[:, channel] = ramp if start[channel] == 0 else 255 - ramp
    rows.append(block)
  return np.concatenate(rows)


FLOW_COLOUR_WHEEL = _colour_wheel()


def _hue(rgb: np.ndarray) -> np.ndarray:
  """HSV hue in [0, 6) of float [..., 3] colours (0 red, 1 yellow, 2 green, ... 5 magenta)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  high, low = rgb.max(-1), rgb.min(-1)
  spread = np.maximum(high - low, 1e-12)
  hue = np.where(r >= high, np.mod((g - b) / spread, 6.0),
                 np.where(g >= high, (b - r) / spread + 2.0, (r - g) / spread + 4.0))
  return np.mod(hue, 6.0)


# The wheel's knots have strictly increasing hue, so hue -> wheel position is a 1-D interpolation.
_WHEEL_HUES = np.append(_hue(FLOW_COLOUR_WHEEL), 6.0)

# ---- palettes (segmentation, skeleton) ----------------------------------------------------------


def _grid_colours(levels: tuple[int, ...]) -> np.ndarray:
  """All colours with channels in `levels`, ordered by farthest-point sampling from black."""
  grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
  grid = grid.astype(np.float64)
  order = [0]  # black
  distance = np.linalg.norm(grid - grid[0], axis=1)
  for _ in range(len(grid) - 1):
    order.append(int(np.argmax(distance)))
    distance = np.minimum(distance, np.linalg.norm(grid - grid[order[-1]], axis=1))
  return grid[order].astype(np.uint8)


def _snap_to_grid(video: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
  """Grid code (base-len(levels) digits of the nearest level per channel) of each pixel: int."""
  levels_array = np.asarray(levels, np.float64)
  nearest = np.abs(video[..., None].astype(np.float64) - levels_array).argmin(-1)
  base = len(levels)
  return (nearest[..., 0] * base + nearest[..., 1]) * base + nearest[..., 2]


def _grid_code(colours: np.ndarray, levels: tuple[int, ...]) -> np.ndarray:
  return _snap_to_grid(colours[:, None, None, :], levels)[:, 0, 0]


_SEGMENTATION_LEVELS = (0, 85, 170, 255)
SEGMENTATION_PALETTE = _grid_colours(_SEGMENTATION_LEVELS)
"""uint8 [64, 3]: colour of instance id i is SEGMENTATION_PALETTE[i] (id 0 = black)."""
_SEGMENTATION_ID_OF_CODE = np.argsort(_grid_code(SEGMENTATION_PALETTE, _SEGMENTATION_LEVELS))

_SKELETON_LEVELS = (0, 64, 128, 192, 255)
MAX_SKELETON_PERSONS = 5
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_KEYPOINTS = len(COCO_KEYPOINTS)
COCO_LIMBS = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
"""COCO's skeleton ('skeleton' in person_keypoints annotations) with 0-based keypoint indices."""
_SKELETON_GRID = _grid_colours(_SKELETON_LEVELS)
_NUM_JOINT_COLOURS = MAX_SKELETON_PERSONS * NUM_KEYPOINTS
SKELETON_JOINT_COLOURS = _SKELETON_GRID[1:1 + _NUM_JOINT_COLOURS].reshape(
    MAX_SKELETON_PERSONS, NUM_KEYPOINTS, 3)
"""uint8 [MAX_SKELETON_PERSONS, 17, 3]: dot colour of joint j of person row p."""
SKELETON_LIMB_COLOURS = _SKELETON_GRID[1 + _NUM_JOINT_COLOURS:][:len(COCO_LIMBS)]
"""uint8 [19, 3]: line colour of each COCO limb (shared by all persons)."""
_JOINT_OF_CODE = np.full(len(_SKELETON_LEVELS) ** 3, -1)
_JOINT_OF_CODE[_grid_code(SKELETON_JOINT_COLOURS.reshape(-1, 3), _SKELETON_LEVELS)] = np.arange(
    _NUM_JOINT_COLOURS)

DENSEPOSE_PART_SCALE = 10
NUM_DENSEPOSE_PARTS = 24


def round_to_pixel(coordinate: np.ndarray) -> np.ndarray:
  """Pixel index of a coordinate (pixel centres are integers): floor(x + 0.5), int64."""
  return np.floor(np.asarray(coordinate, np.float64) + 0.5).astype(np.int64)


def skeleton_dot_radius(height: int, width: int) -> int:
  """Half-size of the square joint dots: 1 (3x3) at 64 px, growing with resolution."""
  return max(1, round(min(height, width) / 64))


def _skeleton_line_radius(height: int, width: int) -> int:
  return max(0, round(min(height, width) / 128))


# ---- rendering ---------------------------------------------------------------------------------


def normalized_disparity(depth: np.ndarray) -> np.ndarray:
  """Depth float [T, H, W] metres -> disparity rescaled to [0, 1] over the clip (1 = nearest)."""
  disparity = 1.0 / np.maximum(np.asarray(depth, np.float64), MIN_DEPTH)
  low, high = disparity.min(), disparity.max()
  if high - low < 1e-12:
    return np.zeros_like(disparity)
  return (disparity - low) / (high - low)


def _render_depth(depth: np.ndarray) -> np.ndarray:
  position = normalized_disparity(depth) * _DEPTH_ARC[-1]
  channels = [np.interp(position, _DEPTH_ARC, DEPTH_COLORMAP_KNOTS[:, c]) for c in range(3)]
  return np.round(np.stack(channels, -1)).astype(np.uint8)


def _render_flow(flow: np.ndarray, max_magnitude: float | None) -> np.ndarray:
  max_magnitude = max_magnitude or flow_max_magnitude(flow.shape[-2])
  u, v = flow[..., 0] / max_magnitude, flow[..., 1] / max_magnitude
  radius = np.minimum(np.hypot(u, v), 1.0) ** FLOW_MAGNITUDE_GAMMA
  position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * len(FLOW_COLOUR_WHEEL)
  k0 = np.floor(position).astype(np.int64)
  fraction = (position - k0)[..., None]
  k0 %= len(FLOW_COLOUR_WHEEL)
  k1 = (k0 + 1) % len(FLOW_COLOUR_WHEEL)
  wheel = FLOW_COLOUR_WHEEL / 255.0
  colour = (1 - fraction) * wheel[k0] + fraction * wheel[k1]
  colour = 1.0 - radius[..., None] * (1.0 - colour)
  return np.round(colour * 255).astype(np.uint8)


def _render_segmentation(instance: np.ndarray) -> np.ndarray:
  instance = np.asarray(instance)
  if instance.size and (instance.min() < 0 or instance.max() >= len(SEGMENTATION_PALETTE)):
    raise ValueError(f"segmentation: instance ids must be in [0, {len(SEGMENTATION_PALETTE)}), "
                     f"got range [{instance.min()}, {instance.max()}]")
  return SEGMENTATION_PALETTE[instance]


def _draw_squares(video, frames, centres, radius, colours):
  """Paints (2r+1)^2 squares on video [T, H, W, 3] at int (x, y) centres [n, 2] of frames [n]."""
  span = np.arange(-radius, radius + 1)
  dx, dy = (offset.ravel() for offset in np.meshgrid(span, span))
  xs, ys = centres[:, 0, None] + dx, centres[:, 1, None] + dy
  inside = (xs >= 0) & (xs < video.shape[2]) & (ys >= 0) & (ys < video.shape[1])
  frames = np.broadcast_to(frames[:, None], xs.shape)
  video[frames[inside], ys[inside], xs[inside]] = np.broadcast_to(
      colours[:, None], xs.shape + (3,))[inside]


def _render_skeleton(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
  keypoints = np.asarray(keypoints, np.float64)
  if keypoints.ndim != 4 or keypoints.shape[2:] != (NUM_KEYPOINTS, 3):
    raise ValueError(f"skeleton: keypoints must be [T, P, 17, 3], got {keypoints.shape}")
  if keypoints.shape[1] > MAX_SKELETON_PERSONS:
    raise ValueError(f"skeleton: at most {MAX_SKELETON_PERSONS} persons can be drawn, got "
                     f"{keypoints.shape[1]}")
  video = np.zeros((len(keypoints), height, width, 3), np.uint8)
  limbs = np.asarray(COCO_LIMBS)
  visible = keypoints[..., 2] > 0.5  # [T, P, 17]
  # Limbs (both ends visible) first, as lines sampled at least twice per pixel of length.
  drawn = visible[..., limbs].all(-1)  # [T, P, 19]
  frames, _, limb_ids = np.nonzero(drawn)
  ends = keypoints[..., :2][:, :, limbs][drawn]  # [L, 2 ends, 2]
  if len(ends):
    longest = np.abs(ends[:, 1] - ends[:, 0]).max()
    steps = np.linspace(0.0, 1.0, 2 * int(np.ceil(min(longest, 4 * (height + width)))) + 2)
    samples = ends[:, None, 0] + steps[:, None] * (ends[:, None, 1] - ends[:, None, 0])
    _draw_squares(video, np.repeat(frames, len(steps)),
                  round_to_pixel(samples.reshape(-1, 2)), _skeleton_line_radius(height, width),
                  np.repeat(SKELETON_LIMB_COLOURS[limb_ids], len(steps), axis=0))
  # Then joint dots, in (frame, person, joint) order.
  frames, persons, joints = np.nonzero(visible)
  _draw_squares(video, frames, round_to_pixel(keypoints[frames, persons, joints, :2]),
                skeleton_dot_radius(height, width), SKELETON_JOINT_COLOURS[persons, joints])
  return video


def _render_densepose(part_index: np.ndarray, uv: np.ndarray) -> np.ndarray:
  part = np.asarray(part_index).astype(np.int64)
  if part.size and (part.min() < 0 or part.max() > NUM_DENSEPOSE_PARTS):
    raise ValueError(f"densepose: part_index must be in [0, {NUM_DENSEPOSE_PARTS}], got range "
                     f"[{part.min()}, {part.max()}]")
  on_body = (part > 0)[..., None]
  iuv = np.concatenate([part[..., None] * DENSEPOSE_PART_SCALE,
                        np.round(np.clip(uv, 0.0, 1.0) * 255)], -1)
  return np.where(on_body, iuv, 0).astype(np.uint8)


def _require(gt: Mapping[str, np.ndarray], name: str, keys: tuple[str, ...]) -> None:
  missing = [key for key in keys if key not in gt]
  if missing:
    raise KeyError(f"render_modality({name!r}) needs gt keys {list(keys)}; missing {missing} "
                   f"(got {sorted(gt)})")


def render_modality(name: str, gt: Mapping[str, np.ndarray], *,
                    flow_max_magnitude_px: float | None = None) -> np.ndarray:
  """Renders ground truth as an RGB-like video uint8 [T, H, W, 3].

  gt keys used: depth float [T, H, W] (metres); flow float [T, H, W, 2] (pixels); instance int
  [T, H, W]; keypoints float [T, P, 17, 3] (x, y, visible) with the frame size taken from
  depth / instance / part_index; part_index int [T, H, W] (0..24) and uv float [T, H, W, 2].
  `flow_max_magnitude_px` overrides flow_max_magnitude(width).
  """
  constants.modality_id(name)
  if name == "depth":
    _require(gt, name, ("depth",))
    return _render_depth(gt["depth"])
  if name == "flow":
    _require(gt, name, ("flow",))
    return _render_flow(np.asarray(gt["flow"], np.float64), flow_max_magnitude_px)
  if name == "segmentation":
    _require(gt, name, ("instance",))
    return _render_segmentation(gt["instance"])
  if name == "skeleton":
    _require(gt, name, ("keypoints",))
    sized = [key for key in ("depth", "instance", "part_index") if key in gt]
    if not sized:
      raise KeyError("render_modality('skeleton') needs one of gt['depth'], gt['instance'] or "
                     "gt['part_index'] for the frame size")
    height, width = np.shape(gt[sized[0]])[1:3]
    return _render_skeleton(gt["keypoints"], height, width)
  _require(gt, name, ("part_index", "uv"))
  return _render_densepose(gt["part_index"], gt["uv"])


# ---- decoding ----------------------------------------------------------------------------------


def _as_video(name: str, video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"decode_modality({name!r}): expected a video [T, H, W, 3], got shape "
                     f"{video.shape}")
  return video.astype(np.float64)


def _decode_depth(video: np.ndarray) -> np.ndarray:
  """Nearest point on the colour-map polyline -> arc-length position in [0, 1], per frame."""
  starts, deltas = DEPTH_COLORMAP_KNOTS[:-1], np.diff(DEPTH_COLORMAP_KNOTS, axis=0)
  out = np.empty(video.shape[:3], np.float32)
  for index, frame in enumerate(video):
    relative = frame.reshape(-1, 1, 3) - starts  # [N, S, 3]
    along = np.clip((relative * deltas).sum(-1) / _DEPTH_SEGMENT_LENGTHS ** 2, 0.0, 1.0)
    error = ((relative - along[..., None] * deltas) ** 2).sum(-1)
    best = np.argmin(error, axis=1)
    rows = np.arange(len(best))
    arc = _DEPTH_ARC[best] + along[rows, best] * _DEPTH_SEGMENT_LENGTHS[best]
    out[index] = (arc / _DEPTH_ARC[-1]).reshape(frame.shape[:2])
  return out


def _decode_flow(video: np.ndarray, max_magnitude: float | None) -> np.ndarray:
  max_magnitude = max_magnitude or flow_max_magnitude(video.shape[2])
  colour = video / 255.0
  # Encoded colour = (1 - r) + r * wheel colour; wheel colours span [0, 1] in every channel,
  # so max - min recovers the radius r and the hue is that of the wheel colour.
  radius = np.clip(colour.max(-1) - colour.min(-1), 0.0, 1.0) ** (1.0 / FLOW_MAGNITUDE_GAMMA)
  position = np.interp(_hue(colour), _WHEEL_HUES, np.arange(len(_WHEEL_HUES)))
  angle = (position / len(FLOW_COLOUR_WHEEL) * 2.0 - 1.0) * np.pi
  flow = -radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1) * max_magnitude
  return flow.astype(np.float32)


def mirror_flow_video(video: np.ndarray) -> np.ndarray:
  """uint8 flow video [T, H, W, 3] of a horizontally flipped clip: pixels mirrored and the
  decoded horizontal component negated, re-rendered (within 4 uint8 levels, 0.15 px at width 64,
  of rendering the flipped ground truth)."""
  flow = _decode_flow(_as_video("flow", video), None)[:, :, ::-1]
  return _render_flow(flow * np.array([-1.0, 1.0], np.float32), None)


def _decode_segmentation(video: np.ndarray) -> np.ndarray:
  return _SEGMENTATION_ID_OF_CODE[_snap_to_grid(video, _SEGMENTATION_LEVELS)].astype(np.int32)


def _decode_skeleton(video: np.ndarray, num_persons: int | None) -> np.ndarray:
  num_frames, height, width = video.shape[:3]
  radius = skeleton_dot_radius(height, width)
  min_pixels = -(-(2 * radius + 1) ** 2 // 3)  # a third of a dot: ignores stray pixels
  labels = _JOINT_OF_CODE[_snap_to_grid(video, _SKELETON_LEVELS)]
  out = np.zeros((num_frames, MAX_SKELETON_PERSONS * NUM_KEYPOINTS, 3), np.float32)
  for frame, frame_labels in enumerate(labels):
    ys, xs = np.nonzero(frame_labels >= 0)
    found = frame_labels[ys, xs]
    order = np.argsort(found, kind="stable")
    found, ys, xs = found[order], ys[order], xs[order]
    joints, starts, counts = np.unique(found, return_index=True, return_counts=True)
    for joint, start, count in zip(joints, starts, counts):
      if count >= min_pixels:
        out[frame, joint] = (np.median(xs[start:start + count]),
                             np.median(ys[start:start + count]), 1.0)
  out = out.reshape(num_frames, MAX_SKELETON_PERSONS, NUM_KEYPOINTS, 3)
  if num_persons is None:
    present = np.nonzero(out[..., 2].any(axis=(0, 2)))[0]
    num_persons = int(present[-1]) + 1 if len(present) else 1
  if num_persons > MAX_SKELETON_PERSONS:
    out = np.concatenate([out, np.zeros((num_frames, num_persons - MAX_SKELETON_PERSONS,
                                         NUM_KEYPOINTS, 3), np.float32)], 1)
  return out[:, :num_persons]


def _decode_densepose(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  part = np.clip(np.round(video[..., 0] / DENSEPOSE_PART_SCALE), 0, NUM_DENSEPOSE_PARTS)
  uv = np.where((part > 0)[..., None], video[..., 1:] / 255.0, 0.0)
  return part.astype(np.uint8), uv.astype(np.float32)


def decode_modality(name: str, video: np.ndarray, *, flow_max_magnitude_px: float | None = None,
                    num_persons: int | None = None):
  """Decodes a modality video uint8 [T, H, W, 3] (or float 0..255) back into numbers.

  Returns, by modality:
    depth         float32 [T, H, W] normalised disparity in [0, 1] (disparity up to scale and
                  shift; 1 = nearest in the clip).
    flow          float32 [T, H, W, 2] pixels (dx, dy), given the magnitude used to render.
    segmentation  int32 [T, H, W] instance ids (nearest palette colour).
    skeleton      float32 [T, P, 17, 3] (x, y, visible); P = `num_persons`, or the highest person
                  row with a decoded joint (at least 1). Invisible joints are zeros.
    densepose     (part_index uint8 [T, H, W], uv float32 [T, H, W, 2]).
  """
  constants.modality_id(name)
  video = _as_video(name, video)
  if name == "depth":
    return _decode_depth(video)
  if name == "flow":
    return _decode_flow(video, flow_max_magnitude_px)
  if name == "segmentation":
    return _decode_segmentation(video)
  if name == "skeleton":
    return _decode_skeleton(video, num_persons)
  return _decode_densepose(video)
