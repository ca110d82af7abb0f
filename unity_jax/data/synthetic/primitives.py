"""Analytic shapes with per-frame rigid poses: what the synthetic world hands to the renderer.

Every shape lives in its own local frame and moves rigidly: world = rotation[t] @ local +
translation[t]. Textures, DensePose parts and UVs are functions of the *local* point, so they
travel with the surface, and the exact forward flow of a surface point is obtained by mapping
its local coordinates with the pose of frame t+1.

Local shape conventions (`size` is float [3]):
  SPHERE    centred at the origin; size = (radius, 0, 0).
  CAPSULE   segment from (0, 0, 0) to (0, length, 0) swept by a ball; size = (radius, length, 0).
  BOX       centred, axis-aligned; size = half extents (x, y, z).
  CYLINDER  axis y, capped at y = +-half_height; size = (radius, half_height, 0).

World frame: metres, +y up, the ground is the plane y = 0.
"""

import dataclasses

import numpy as np

SPHERE, CAPSULE, BOX, CYLINDER = 0, 1, 2, 3
KIND_NAMES = ("sphere", "capsule", "box", "cylinder")

# Texture patterns: a surface point takes colour[0] where the pattern is 0, colour[1] where 1.
PLAIN, STRIPES, CHECKER, SECTORS, HAIR = 0, 1, 2, 3, 4

# How person shapes map local points to DensePose-like (part, U, V); see people.py.
UV_NONE, UV_LIMB, UV_HEAD, UV_WRAP = 0, 1, 2, 3

SEMANTIC_CLASSES = ("sky", "ground", "person", "ball", "box", "cylinder")
"""Semantic class id = index: gt["semantic"] uses these ids (0 = sky, 1 = ground, ...)."""
SEMANTIC_ID = {name: index for index, name in enumerate(SEMANTIC_CLASSES)}


@dataclasses.dataclass(frozen=True)
class Shape:
  """One analytic shape of one instance, with its pose for each of T frames."""
  kind: int
  size: tuple[float, float, float]
  rotation: np.ndarray  # float64 [T, 3, 3], local -> world
  translation: np.ndarray  # float64 [T, 3]
  instance: int  # 1..N (persons first), never 0: 0 is sky and ground.
  semantic: int  # SEMANTIC_ID value.
  colour: tuple[tuple[float, float, float], tuple[float, float, float]]  # albedo pair in [0, 1]
  pattern: int = PLAIN
  pattern_scale: float = 1.0  # metres per stripe/check; number of sectors for SECTORS.
  parts: tuple[int, int] = (0, 0)  # DensePose part ids (see people.py), 0 = not a person.
  uv_mode: int = UV_NONE


@dataclasses.dataclass(frozen=True)
class Primitives:
  """K shapes stacked in one fixed order for the whole clip (the renderer's input)."""
  kind: np.ndarray  # int32 [K]
  size: np.ndarray  # float64 [K, 3]
  rotation: np.ndarray  # float64 [T, K, 3, 3], local -> world
  translation: np.ndarray  # float64 [T, K, 3]
  instance: np.ndarray  # int32 [K]
  semantic: np.ndarray  # int32 [K]
  colour: np.ndarray  # float64 [K, 2, 3]
  pattern: np.ndarray  # int32 [K]
  pattern_scale: np.ndarray  # float64 [K]
  parts: np.ndarray  # int32 [K, 2]
  uv_mode: np.ndarray  # int32 [K]

  @property
  def count(self) -> int:
    return len(self.kind)


def stack_shapes(shapes: list[Shape], num_frames: int) -> Primitives:
  """Stacks shapes into `Primitives`; an empty list gives K = 0 arrays of the right ranks."""
  for index, shape in enumerate(shapes):
    if shape.rotation.shape != (num_frames, 3, 3) or shape.translation.shape != (num_frames, 3):
      raise ValueError(
          f"shape {index} ({KIND_NAMES[shape.kind]}, instance {shape.instance}) has pose shapes "
          f"{shape.rotation.shape}, {shape.translation.shape}; expected ({num_frames}, 3, 3), "
          f"({num_frames}, 3)")
    if shape.instance < 1:
      raise ValueError(f"shape {index} has instance {shape.instance}; instances start at 1")

  def column(getter, dtype, empty_shape):
    if not shapes:
      return np.zeros(empty_shape, dtype)
    return np.asarray([getter(s) for s in shapes], dtype)

  return Primitives(
      kind=column(lambda s: s.kind, np.int32, (0,)),
      size=column(lambda s: s.size, np.float64, (0, 3)),
      rotation=(np.stack([s.rotation for s in shapes], axis=1) if shapes
                else np.zeros((num_frames, 0, 3, 3))),
      translation=(np.stack([s.translation for s in shapes], axis=1) if shapes
                   else np.zeros((num_frames, 0, 3))),
      instance=column(lambda s: s.instance, np.int32, (0,)),
      semantic=column(lambda s: s.semantic, np.int32, (0,)),
      colour=column(lambda s: s.colour, np.float64, (0, 2, 3)),
      pattern=column(lambda s: s.pattern, np.int32, (0,)),
      pattern_scale=column(lambda s: s.pattern_scale, np.float64, (0,)),
      parts=column(lambda s: s.parts, np.int32, (0, 2)),
      uv_mode=column(lambda s: s.uv_mode, np.int32, (0,)),
  )


def bounding_spheres(primitives: Primitives,
                     frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Spheres enclosing each shape: world centres float [T, K, 3] (or [K, 3] for one `frame`)
  and radii float [K]."""
  size, kind = primitives.size, primitives.kind
  local_centre = np.zeros_like(size)
  radius = size[:, 0].copy()  # spheres
  capsule = kind == CAPSULE
  local_centre[capsule, 1] = size[capsule, 1] / 2
  radius[capsule] += size[capsule, 1] / 2
  radius[kind == BOX] = np.linalg.norm(size[kind == BOX], axis=-1)
  radius[kind == CYLINDER] = np.hypot(size[kind == CYLINDER, 0], size[kind == CYLINDER, 1])
  frames = slice(None) if frame is None else frame
  rotation, translation = primitives.rotation[frames], primitives.translation[frames]
  return (rotation @ local_centre[..., None])[..., 0] + translation, radius


def normalize(vectors: np.ndarray) -> np.ndarray:
  """Unit vectors along the last axis (float [..., 3])."""
  return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def rotation_y(angle: np.ndarray) -> np.ndarray:
  """Rotations about +y: float [T] radians -> float [T, 3, 3]; maps +z to (sin a, 0, cos a)."""
  angle = np.asarray(angle, np.float64)
  cos, sin = np.cos(angle), np.sin(angle)
  zero, one = np.zeros_like(angle), np.ones_like(angle)
  return np.stack([np.stack([cos, zero, sin], -1),
                   np.stack([zero, one, zero], -1),
                   np.stack([-sin, zero, cos], -1)], -2)


def axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
  """Rodrigues rotations: unit axis float [3] and angles float [T] -> float [T, 3, 3]."""
  x, y, z = normalize(np.asarray(axis, np.float64))
  cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
  angle = np.asarray(angle, np.float64)[:, None, None]
  return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * (cross @ cross)


def frame_from_axis(axis: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Right-handed frames whose local y is `axis` and local z is `reference` made orthogonal.

  axis, reference: float [T, 3] (reference must not be parallel to axis).
  Returns float [T, 3, 3] with columns (x, y, z), i.e. a local -> world rotation.
  """
  y_axis = normalize(axis)
  z_axis = normalize(reference - np.sum(reference * y_axis, -1, keepdims=True) * y_axis)
  x_axis = np.cross(y_axis, z_axis)
  return np.stack([x_axis, y_axis, z_axis], axis=-1)


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
  """World -> camera rotations (OpenCV camera: x right, y down, z forward).

  position, target: float [T, 3] with target not straight above or below position.
  Returns float [T, 3, 3] whose rows are the camera's right, down and forward axes in world.
  """
  forward = normalize(target - position)
  right = normalize(np.cross(forward, np.array([0.0, 1.0, 0.0])))
  down = np.cross(forward, right)
  return np.stack([right, down, forward], axis=-2)
