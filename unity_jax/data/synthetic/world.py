"""Scene sampling for the synthetic world: people, objects, ground, sky, light and a moving camera.

`sample_scene(seed, source, ...)` is deterministic: it draws everything from
`np.random.default_rng([seed, source_id(source)])`. Scenes per source group:
  single_person    one person (walk / jog / wave) and 0-2 objects, camera 3.2-4.8 m away.
  two_person       two people and 0-2 objects.
  general          2-5 objects (balls, boxes, cylinders), no people.
  subject_centric  one subject (a person, or a large object) 2-3 m from the camera, which
                   follows it when it moves, so the subject fills much of the frame.
Clips are sampled at FPS frames per second; frame t is at time t / FPS.
"""

import dataclasses

import numpy as np

from unity_jax import constants
from unity_jax.data.synthetic import people
from unity_jax.data.synthetic import primitives as prim

FPS = 8.0
COLOURS = {
    "red": (0.85, 0.12, 0.10), "green": (0.15, 0.65, 0.20), "blue": (0.12, 0.28, 0.85),
    "yellow": (0.95, 0.85, 0.15), "orange": (0.95, 0.50, 0.08), "purple": (0.55, 0.20, 0.75),
    "white": (0.92, 0.92, 0.90), "black": (0.10, 0.10, 0.11), "pink": (0.95, 0.50, 0.70),
    "cyan": (0.10, 0.78, 0.85), "brown": (0.50, 0.30, 0.15), "grey": (0.50, 0.50, 0.52)}
_GROUNDS = {  # setting phrase -> (two tile albedos)
    "a grassy field": ((0.25, 0.55, 0.20), (0.32, 0.63, 0.25)),
    "a grey plaza": ((0.45, 0.45, 0.47), (0.62, 0.62, 0.64)),
    "sandy ground": ((0.80, 0.70, 0.50), (0.72, 0.61, 0.42)),
    "a tiled floor": ((0.75, 0.68, 0.58), (0.45, 0.32, 0.25)),
    "a blue court": ((0.20, 0.35, 0.60), (0.28, 0.45, 0.70))}
_SKIES = (((0.75, 0.85, 0.95), (0.30, 0.50, 0.85)), ((0.80, 0.80, 0.82), (0.60, 0.62, 0.66)),
          ((0.98, 0.70, 0.45), (0.40, 0.45, 0.75)))
_OBJECT_ACTIONS = {"ball": ("rolls", "bounces", "rests"), "box": ("spins", "slides", "rests"),
                   "cylinder": ("spins", "slides", "rests")}
CAMERA_MOTIONS = ("static", "pan", "orbit", "dolly", "truck")


@dataclasses.dataclass(frozen=True)
class Camera:
  """Pinhole camera with square pixels; pixel (row i, col j) has its centre at (x=j, y=i)."""
  height: int
  width: int
  focal: float  # pixels (fx = fy)
  rotation: np.ndarray  # float64 [T, 3, 3], world -> camera (OpenCV: x right, y down, z forward)
  position: np.ndarray  # float64 [T, 3], camera centre in world

  @property
  def principal_point(self) -> tuple[float, float]:
    return (self.width - 1) / 2.0, (self.height - 1) / 2.0

  def to_camera(self, points: np.ndarray, frame: int) -> np.ndarray:
    """World points float [..., 3] -> camera-frame points float [..., 3] at `frame`."""
    return (points - self.position[frame]) @ self.rotation[frame].T

  def project(self, points: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """World points float [..., 3] -> (pixel xy float [..., 2], camera z float [...])."""
    cam = self.to_camera(points, frame)
    z = cam[..., 2]
    safe_z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    cx, cy = self.principal_point
    xy = np.stack([self.focal * cam[..., 0] / safe_z + cx, self.focal * cam[..., 1] / safe_z + cy],
                  -1)
    return xy, z


@dataclasses.dataclass(frozen=True)
class Entity:
  """A captionable thing in the scene (a person or an object) and how it moves."""
  instance: int
  noun: str  # "person", "ball", "box", "cylinder"
  description: str  # "a person in a red shirt and blue trousers", "a red ball"
  action: str  # "walks", "jogs", "waves", "rolls", "bounces", "spins", "slides", "rests"
  path: np.ndarray  # float64 [T, 3], a world point that moves with it (for direction phrases)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything the renderer and the captioner need for one clip."""
  source: str
  times: np.ndarray  # float64 [T], seconds
  camera: Camera
  camera_phrase: str  # "pans left", "follows the subject", ... (see _camera_phrase)
  primitives: prim.Primitives
  person_keypoints: np.ndarray  # float64 [T, P, 17, 3] world COCO keypoints, P = person count
  entities: tuple[Entity, ...]  # persons first (instances 1..P), then objects
  setting: str  # ground phrase, "a grassy field"
  ground_colours: np.ndarray  # float64 [2, 3] checker tile albedos
  ground_tile: float  # metres
  sky_colours: np.ndarray  # float64 [2, 3] horizon and zenith
  light: np.ndarray  # float64 [3], unit vector towards the sun

  @property
  def person_count(self) -> int:
    return self.person_keypoints.shape[1]


def _article(word: str) -> str:
  return "an" if word[:1] in "aeiou" else "a"


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
  axis = prim.normalize(rng.normal(size=3))
  return prim.axis_angle(axis, np.array([rng.uniform(0, 2 * np.pi)]))[0]


def _sample_object(rng: np.random.Generator, noun: str, instance: int, centre: np.ndarray,
                   times: np.ndarray, scale: float = 1.0) -> tuple[prim.Shape, Entity]:
  """One rigid object resting on or moving over the ground around `centre` (x, z) mid-clip."""
  colour_name = list(COLOURS)[rng.integers(len(COLOURS))]
  colour = COLOURS[colour_name]
  secondary = COLOURS["white"] if rng.random() < 0.5 else tuple(0.55 * c for c in colour)
  action = _OBJECT_ACTIONS[noun][rng.integers(3)]
  num_frames = len(times)
  relative_time = times - times[len(times) // 2]  # Movers pass through `centre` mid-clip.
  direction = rng.uniform(0, 2 * np.pi)
  heading = np.array([np.sin(direction), 0.0, np.cos(direction)])
  speed = rng.uniform(0.6, 1.6)
  if noun == "ball":
    radius = rng.uniform(0.2, 0.45) * scale
    size, lift = (radius, 0.0, 0.0), np.full(num_frames, radius)
    pattern = [prim.SECTORS, prim.STRIPES, prim.CHECKER][rng.integers(3)]
    pattern_scale = float(rng.choice([4, 6, 8])) if pattern == prim.SECTORS else radius / 2
  elif noun == "box":
    size = tuple(rng.uniform(0.15, 0.45, size=3) * scale)
    lift = np.full(num_frames, size[1])
    pattern = [prim.CHECKER, prim.STRIPES, prim.PLAIN][rng.integers(3)]
    pattern_scale = rng.uniform(0.1, 0.2) * scale
  else:  # cylinder, standing upright
    size = (rng.uniform(0.15, 0.35) * scale, rng.uniform(0.2, 0.55) * scale, 0.0)
    lift = np.full(num_frames, size[1])
    pattern = [prim.SECTORS, prim.STRIPES][rng.integers(2)]
    pattern_scale = float(rng.choice([6, 8, 10])) if pattern == prim.SECTORS else size[1] / 3
  base = np.array([centre[0], 0.0, centre[1]])
  translation = np.tile(base, (num_frames, 1))
  initial = _random_rotation(rng) if noun == "ball" else prim.rotation_y(
      np.array([rng.uniform(0, 2 * np.pi)]))[0]
  rotation = np.tile(initial, (num_frames, 1, 1))
  if action in ("rolls", "slides"):
    translation = translation + speed * relative_time[:, None] * heading
  if action == "rolls":  # Rolling without slipping: angular velocity = up x velocity / radius.
    axis = np.cross([0.0, 1.0, 0.0], heading)
    rotation = prim.axis_angle(axis, speed * relative_time / size[0]) @ initial
  elif action == "bounces":
    lift = lift + rng.uniform(0.3, 0.7) * np.abs(np.sin(np.pi * 1.2 * times + rng.uniform(0, 3)))
    rotation = prim.axis_angle(rng.normal(size=3), rng.uniform(1, 3) * times) @ initial
  elif action == "spins":
    rate = rng.choice([-1, 1]) * rng.uniform(0.8, 2.0)
    rotation = prim.rotation_y(rate * times) @ initial
  translation[:, 1] = lift
  shape = prim.Shape(
      kind={"ball": prim.SPHERE, "box": prim.BOX, "cylinder": prim.CYLINDER}[noun], size=size,
      rotation=rotation, translation=translation, instance=instance,
      semantic=prim.SEMANTIC_ID[noun], colour=(colour, secondary), pattern=pattern,
      pattern_scale=pattern_scale)
  adjective = f"large {colour_name}" if scale >= 1.5 else colour_name
  description = f"{_article(adjective)} {adjective} {noun}"
  return shape, Entity(instance, noun, description, action, translation)


def _person(rng: np.random.Generator, instance: int, mid: np.ndarray, times: np.ndarray,
            gait_weights: tuple[float, float, float]):
  """A person passing through `mid` (x, z) mid-clip: (PersonSpec, shapes, keypoints, Entity).

  gait_weights: probabilities of people.GAITS (walk, jog, wave).
  """
  gait = people.GAITS[rng.choice(3, p=gait_weights)]
  palette = {k: v for k, v in COLOURS.items() if k != "grey"}
  spec = people.sample_person(rng, instance, gait, palette)
  heading = rng.uniform(0, 2 * np.pi)
  travel = people.GAIT_SPEED[gait] * times[len(times) // 2]
  start = mid - travel * np.array([np.sin(heading), np.cos(heading)])
  spec = dataclasses.replace(spec, heading=heading, start=(float(start[0]), float(start[1])))
  shapes, keypoints = people.shapes_and_keypoints(spec, times)
  shirt, trousers = spec.clothing_names
  description = f"a person in {_article(shirt)} {shirt} shirt and {trousers} trousers"
  action = {"walk": "walks", "jog": "jogs", "wave": "waves"}[gait]
  path = shapes[0].translation  # the torso
  return spec, shapes, keypoints, Entity(instance, "person", description, action, path)


def _camera_path(rng, motion, times, target, distance, height, azimuth):
  """Camera centres and look-at points float [T, 3] for one of CAMERA_MOTIONS around `target`."""
  progress = (times - times[0]) / max(times[-1] - times[0], 1e-9) - 0.5  # -0.5 .. 0.5
  sign = rng.choice([-1.0, 1.0])
  azimuths = np.full(len(times), azimuth)
  distances = np.full(len(times), distance)
  if motion == "orbit":
    azimuths = azimuth + sign * rng.uniform(0.25, 0.45) * progress
  elif motion == "dolly":
    distances = distance + sign * rng.uniform(0.6, 1.2) * progress
  offsets = np.stack([np.sin(azimuths), np.zeros_like(azimuths), -np.cos(azimuths)], -1)
  position = target * [1, 0, 1] + distances[:, None] * offsets + [0.0, height, 0.0]
  look = np.tile(target, (len(times), 1))
  right = prim.look_at(position[:1], look[:1])[0, 0]
  if motion == "pan":
    turn = prim.rotation_y(sign * rng.uniform(0.12, 0.25) * progress)
    look = position + np.einsum("tij,tj->ti", turn, look - position)
  elif motion == "truck":
    shift = sign * rng.uniform(0.6, 1.2) * progress[:, None] * right
    position, look = position + shift, look + shift
  return position, look


def _camera_phrase(motion: str, position: np.ndarray, look: np.ndarray) -> str:
  """Caption phrase for a camera path (left/right measured in the first frame's view)."""
  right = prim.look_at(position[:1], look[:1])[0, 0]
  if motion == "pan":
    return f"pans {'right' if np.dot(look[-1] - look[0], right) > 0 else 'left'}"
  if motion == "truck":
    side = "right" if np.dot(position[-1] - position[0], right) > 0 else "left"
    return f"moves sideways to the {side}"
  if motion == "dolly":
    closer = np.linalg.norm(look[-1] - position[-1]) < np.linalg.norm(look[0] - position[0])
    return "moves in" if closer else "pulls back"
  return {"static": "is static", "orbit": "orbits around the scene",
          "follow": "follows the subject"}[motion]


def _place(rng, count, radius_range, occupied, clearance):
  """`count` ground points (x, z) at least `clearance` from each other and from `occupied`.

  Gives up on the clearance after 50 tries per point (the last try is kept).
  """
  points = []
  for _ in range(count):
    for _attempt in range(50):
      radius, angle = rng.uniform(*radius_range), rng.uniform(0, 2 * np.pi)
      point = radius * np.array([np.cos(angle), np.sin(angle)])
      if all(np.linalg.norm(point - other) >= clearance for other in occupied + points):
        break
    points.append(point)
  return points


def sample_scene(seed: int, source: str, num_frames: int = 17, height: int = 64,
                 width: int = 64) -> Scene:
  """Samples one scene of `source` (constants.SOURCES) deterministically from `seed`."""
  source_index = constants.source_id(source)
  if seed < 0 or num_frames < 1 or height < 8 or width < 8:
    raise ValueError(f"sample_scene needs seed >= 0, num_frames >= 1 and height, width >= 8; got "
                     f"seed={seed}, num_frames={num_frames}, height={height}, width={width}")
  rng = np.random.default_rng([seed, source_index])
  times = np.arange(num_frames) / FPS
  shapes, entities, keypoints = [], [], []
  target_height, fov_range = 0.85, (45.0, 60.0)
  distance_range, height_range = (3.2, 4.8), (1.2, 2.0)
  motion = CAMERA_MOTIONS[rng.integers(len(CAMERA_MOTIONS))]
  follow = None  # entity path the camera follows (subject-centric movers)

  def add_person(mid, gait_weights):
    _, person_shapes, person_keypoints, entity = _person(
        rng, len(entities) + 1, mid, times, gait_weights)
    shapes.extend(person_shapes)
    keypoints.append(person_keypoints)
    entities.append(entity)

  def add_objects(points, scale=1.0):
    for point in points:
      noun = ("ball", "box", "cylinder")[rng.integers(3)]
      shape, entity = _sample_object(rng, noun, len(entities) + 1, point, times, scale)
      shapes.append(shape)
      entities.append(entity)

  if source in ("single_person", "two_person"):
    mids = _place(rng, 1 if source == "single_person" else 2, (0.0, 1.0), [], 1.3)
    for mid in mids:
      add_person(mid, gait_weights=(0.6, 0.15, 0.25))
    walked = [point[[0, 2]] for entity in entities for point in entity.path]  # keep paths free
    add_objects(_place(rng, int(rng.integers(3)), (1.2, 3.0), walked, 1.0))
  elif source == "general":
    add_objects(_place(rng, int(rng.integers(2, 6)), (0.0, 2.2), [], 1.3), scale=1.25)
    distance_range, height_range, target_height = (3.5, 5.5), (1.5, 2.8), 0.4
    fov_range = (50.0, 65.0)
  else:  # subject_centric
    distance_range, height_range, fov_range = (2.0, 2.7), (1.0, 1.5), (45.0, 55.0)
    if rng.random() < 0.6:
      add_person(np.zeros(2), gait_weights=(0.5, 0.15, 0.35))
      target_height = 1.1
    else:
      add_objects([np.zeros(2)], scale=1.8)
      distance_range, target_height = (2.4, 3.2), 0.5
    if entities[0].action in ("walks", "jogs", "rolls", "slides"):
      follow, motion = entities[0].path, "follow"
    else:
      motion = ("static", "orbit")[rng.integers(2)]
    add_objects(_place(rng, int(rng.integers(2)), (3.0, 4.5), [np.zeros(2)], 1.2))

  primitives = prim.stack_shapes(shapes, num_frames)
  centres, radii = prim.bounding_spheres(primitives)
  target = np.array([0.0, target_height, 0.0])
  for attempt in range(40):  # Keep the camera clear of every shape in every frame.
    distance = rng.uniform(*distance_range) + 0.1 * attempt
    cam_height, azimuth = rng.uniform(*height_range), rng.uniform(0, 2 * np.pi)
    if follow is not None:
      offset = distance * np.array([np.sin(azimuth), 0.0, -np.cos(azimuth)])
      look = follow * [1, 0, 1] + [0.0, target_height, 0.0]
      position = look + offset + [0.0, cam_height - target_height, 0.0]
    else:
      position, look = _camera_path(rng, motion, times, target, distance, cam_height, azimuth)
    gap = np.linalg.norm(centres - position[:, None], axis=-1) - radii
    if gap.size == 0 or gap.min() > 0.4:
      break
  fov = np.deg2rad(rng.uniform(*fov_range))
  camera = Camera(height=height, width=width, focal=(width / 2.0) / np.tan(fov / 2),
                  rotation=prim.look_at(position, look), position=position)
  setting = list(_GROUNDS)[rng.integers(len(_GROUNDS))]
  elevation, sun_azimuth = rng.uniform(0.5, 1.2), rng.uniform(0, 2 * np.pi)
  return Scene(
      source=source, times=times, camera=camera,
      camera_phrase=_camera_phrase(motion, position, look),
      primitives=primitives,
      person_keypoints=(np.stack(keypoints, 1) if keypoints
                        else np.zeros((num_frames, 0, 17, 3))),
      entities=tuple(entities), setting=setting,
      ground_colours=np.asarray(_GROUNDS[setting]), ground_tile=float(rng.uniform(0.5, 1.2)),
      sky_colours=np.asarray(_SKIES[rng.integers(len(_SKIES))]),
      light=np.array([np.cos(elevation) * np.sin(sun_azimuth), np.sin(elevation),
                      np.cos(elevation) * np.cos(sun_azimuth)]))
