"""Vectorised numpy ray caster for synthetic scenes, with exact per-frame ground truth.

One ray per pixel centre is intersected analytically with every shape (in the shape's local
frame) and with the ground plane y = 0; the nearest hit gives depth, instance, semantic class,
DensePose part and UV, and a Lambertian-shaded textured colour. Rays that hit nothing, or hit
beyond FAR_DEPTH, see the sky.

Forward flow is exact: the surface point hit at frame t is expressed in its shape's local frame,
moved with the shape's pose at t+1 (ground and sky are static; sky points sit at FAR_DEPTH) and
projected with camera t+1; flow = p_{t+1} - p_t in pixels. Occlusion at t+1 is not modelled
(as for any forward flow). The last frame's flow is zero.
"""

import numpy as np

from unity_jax.data import modality_render
from unity_jax.data.synthetic import primitives as prim
from unity_jax.data.synthetic import world

NEAR = 0.05
FAR_DEPTH = 50.0
"""Depth (metres) of sky pixels; ground beyond this distance is drawn as sky."""
KEYPOINT_OCCLUSION_TOLERANCE = 0.25
"""A joint counts as visible if the surface seen at its pixel is no more than this many metres
in front of it (joints sit inside their limbs) and belongs to the same person."""
_AMBIENT = 0.35
_GROUND, _SKY = -1, -2


def _side_hits(origin, direction, radius):
  """Hits of rays with infinite y-axis cylinders: origin [k,3], direction [N,k,3], radius [k]."""
  a = 1.0 - direction[..., 1] ** 2
  b = origin[:, 0] * direction[..., 0] + origin[:, 2] * direction[..., 2]
  c = origin[:, 0] ** 2 + origin[:, 2] ** 2 - radius ** 2
  disc = b * b - a * c
  with np.errstate(divide="ignore", invalid="ignore"):
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
  height = origin[:, 1] + t * direction[..., 1]
  return t, height, (disc >= 0) & (a > 1e-12) & (t > NEAR)


def _hit_spheres(origin, direction, size):
  """Distances along unit rays to spheres at the local origin (inf on a miss): [N, k]."""
  b = np.einsum("nki,ki->nk", direction, origin)
  c = np.sum(origin * origin, -1) - size[:, 0] ** 2
  disc = b * b - c
  t = -b - np.sqrt(np.maximum(disc, 0.0))
  return np.where((disc >= 0) & (t > NEAR), t, np.inf)


def _hit_capsules(origin, direction, size):
  """A capsule is the union of its side and two end balls, so its hit is the nearest of them."""
  radius, length = size[:, 0], size[:, 1]
  t, height, ok = _side_hits(origin, direction, radius)
  side = np.where(ok & (height >= 0) & (height <= length), t, np.inf)
  end_offset = np.stack([np.zeros_like(length), length, np.zeros_like(length)], -1)
  return np.minimum(side, np.minimum(_hit_spheres(origin, direction, size),
                                     _hit_spheres(origin - end_offset, direction, size)))


def _hit_boxes(origin, direction, size):
  with np.errstate(divide="ignore", invalid="ignore"):
    t1 = (-size - origin) / direction
    t2 = (size - origin) / direction
  t_near = np.max(np.minimum(t1, t2), -1)
  t_far = np.min(np.maximum(t1, t2), -1)
  return np.where((t_near <= t_far) & (t_near > NEAR), t_near, np.inf)


def _hit_cylinders(origin, direction, size):
  radius, half_height = size[:, 0], size[:, 1]
  t, height, ok = _side_hits(origin, direction, radius)
  side = np.where(ok & (np.abs(height) <= half_height), t, np.inf)
  # Only the cap facing the camera can be hit first, and only from beyond its plane.
  cap_height = np.sign(origin[:, 1]) * half_height
  with np.errstate(divide="ignore", invalid="ignore"):
    t_cap = (cap_height - origin[:, 1]) / direction[..., 1]
  cap_x = origin[:, 0] + t_cap * direction[..., 0]
  cap_z = origin[:, 2] + t_cap * direction[..., 2]
  cap_ok = ((np.abs(origin[:, 1]) > half_height) & (t_cap > NEAR)
            & (cap_x ** 2 + cap_z ** 2 <= radius ** 2))
  return np.minimum(side, np.where(cap_ok, t_cap, np.inf))


_HIT_FUNCTIONS = {prim.SPHERE: _hit_spheres, prim.CAPSULE: _hit_capsules, prim.BOX: _hit_boxes,
                  prim.CYLINDER: _hit_cylinders}


def _nearest_hits(primitives, frame, origin, directions):
  """Nearest hit per ray: (distance float [N], shape index int [N]; _GROUND / _SKY)."""
  count = primitives.count
  distances = np.full((len(directions), count + 1), np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    t_ground = -origin[1] / directions[:, 1]
  distances[:, count] = np.where((directions[:, 1] < 0) & (t_ground > NEAR), t_ground, np.inf)
  for kind, hit in _HIT_FUNCTIONS.items():
    members = np.nonzero(primitives.kind == kind)[0]
    if len(members):
      rotation = primitives.rotation[frame, members]  # local -> world
      local_origin = np.einsum("kji,kj->ki", rotation, origin - primitives.translation[frame, members])
      local_dirs = np.einsum("nj,kji->nki", directions, rotation)
      distances[:, members] = hit(local_origin, local_dirs, primitives.size[members])
  nearest = np.argmin(distances, axis=1)
  distance = distances[np.arange(len(directions)), nearest]
  index = np.where(nearest == count, _GROUND, nearest)
  return distance, np.where(np.isinf(distance), _SKY, index)


def _local_normals(kind, size, point):
  """Outward unit normals of hit points float [n, 3] given in their shapes' local frames."""
  normal = point / size[:, :1]  # spheres
  capsule = kind == prim.CAPSULE
  axis_point = np.zeros_like(point)
  axis_point[:, 1] = np.clip(point[:, 1], 0.0, size[:, 1])
  normal = np.where(capsule[:, None], point - axis_point, normal)
  box = kind == prim.BOX
  scaled = np.abs(point) / np.where(box[:, None], size, 1.0)
  face = np.argmax(scaled, axis=1)
  box_normal = np.zeros_like(point)
  box_normal[np.arange(len(point)), face] = np.sign(point[np.arange(len(point)), face])
  normal = np.where(box[:, None], box_normal, normal)
  cylinder = kind == prim.CYLINDER
  radial = np.hypot(point[:, 0], point[:, 2])
  on_cap = np.abs(np.abs(point[:, 1]) - size[:, 1]) < np.abs(radial - size[:, 0])
  cylinder_normal = np.where(on_cap[:, None], [0.0, 1.0, 0.0] * np.sign(point[:, 1:2]),
                             point * [1.0, 0.0, 1.0])
  normal = np.where(cylinder[:, None], cylinder_normal, normal)
  return prim.normalize(normal)


def _pattern(pattern, scale, size, point):
  """Which albedo (0 or 1) each local hit point takes: int [n]."""
  cells = np.floor(point / scale[:, None]).astype(np.int64)
  azimuth = np.arctan2(point[:, 2], point[:, 0]) / (2 * np.pi) + 0.5
  radius = size[:, 0]
  choices = {
      prim.STRIPES: cells[:, 1] % 2,
      prim.CHECKER: cells.sum(-1) % 2,
      prim.SECTORS: np.floor(azimuth * scale).astype(np.int64) % 2,
      prim.HAIR: ((point[:, 1] > 0.35 * radius) | (point[:, 2] < -0.3 * radius)).astype(np.int64),
  }
  selected = np.zeros(len(point), np.int64)
  for kind, value in choices.items():
    selected = np.where(pattern == kind, value, selected)
  return selected


def _parts_and_uv(primitives, index, point):
  """DensePose part id int [n] and UV float [n, 2] of person hits (0 elsewhere)."""
  mode, parts, size = primitives.uv_mode[index], primitives.parts[index], primitives.size[index]
  x, y, z = point[:, 0], point[:, 1], point[:, 2]
  radius, length = size[:, 0], np.maximum(size[:, 1], 1e-9)
  is_sphere = primitives.kind[index] == prim.SPHERE
  along = np.where(is_sphere, np.clip((1 - y / radius) / 2, 0, 1), np.clip(y / length, 0, 1))
  limb_part = np.where(z >= 0, parts[:, 1], parts[:, 0])  # front / back half
  limb_v = np.arctan2(np.abs(z), x) / np.pi
  head_part = np.where(x >= 0, parts[:, 1], parts[:, 0])  # left / right half
  head_v = np.arctan2(z, np.abs(x)) / np.pi + 0.5
  wrap_v = np.arctan2(z, x) / (2 * np.pi) + 0.5
  part = np.select([mode == prim.UV_LIMB, mode == prim.UV_HEAD, mode == prim.UV_WRAP],
                   [limb_part, head_part, parts[:, 0]], 0)
  v = np.select([mode == prim.UV_LIMB, mode == prim.UV_HEAD, mode == prim.UV_WRAP],
                [limb_v, head_v, wrap_v], 0.0)
  uv = np.where((part > 0)[:, None], np.stack([along, v], -1), 0.0)
  return part, np.clip(uv, 0.0, 1.0)


def _sky_colour(scene, directions):
  elevation = np.clip(directions[:, 1], 0.0, 1.0)
  horizon, zenith = scene.sky_colours
  azimuth = np.arctan2(directions[:, 0], directions[:, 2])
  clouds = 0.05 * np.sin(7 * azimuth) * np.sin(25 * elevation + 1.0)
  return horizon + (zenith - horizon) * elevation[:, None] ** 0.6 + clouds[:, None]


def _ground_albedo(scene, point):
  cells = np.floor(point[:, [0, 2]] / scene.ground_tile).astype(np.int64)
  albedo = scene.ground_colours[cells.sum(-1) % 2]
  variation = 1.0 + 0.08 * np.sin(0.9 * point[:, 0]) * np.sin(1.3 * point[:, 2])
  return albedo * variation[:, None]


def _render_frame(scene, frame, rays_camera, pixel_xy):
  """All per-pixel outputs of one frame, flattened over pixels."""
  camera, primitives = scene.camera, scene.primitives
  origin = camera.position[frame]
  rays_world = rays_camera @ camera.rotation[frame]  # rows: R^T d
  distance, index = _nearest_hits(primitives, frame, origin, rays_world)
  depth = distance * rays_camera[:, 2]
  index = np.where(depth > FAR_DEPTH, _SKY, index)
  sky, ground, shape = index == _SKY, index == _GROUND, index >= 0
  depth = np.where(sky, FAR_DEPTH, depth)
  point = origin + (depth / rays_camera[:, 2])[:, None] * rays_world

  num_pixels = len(rays_camera)
  instance = np.zeros(num_pixels, np.int32)
  semantic = np.where(ground, prim.SEMANTIC_ID["ground"], prim.SEMANTIC_ID["sky"]).astype(np.int32)
  part = np.zeros(num_pixels, np.int32)
  uv = np.zeros((num_pixels, 2))
  normal = np.tile([0.0, 1.0, 0.0], (num_pixels, 1))
  albedo = np.zeros((num_pixels, 3))
  albedo[ground] = _ground_albedo(scene, point[ground])
  next_point = point.copy()  # ground and sky are static

  hit = index[shape]
  rotation = primitives.rotation[frame, hit]
  local = np.einsum("nji,nj->ni", rotation, point[shape] - primitives.translation[frame, hit])
  kind, size = primitives.kind[hit], primitives.size[hit]
  normal[shape] = np.einsum("nij,nj->ni", rotation, _local_normals(kind, size, local))
  choice = _pattern(primitives.pattern[hit], primitives.pattern_scale[hit], size, local)
  albedo[shape] = primitives.colour[hit, choice]
  instance[shape] = primitives.instance[hit]
  semantic[shape] = primitives.semantic[hit]
  part[shape], uv[shape] = _parts_and_uv(primitives, hit, local)

  shading = _AMBIENT + (1 - _AMBIENT) * np.maximum(0.0, normal @ scene.light)
  colour = np.where(sky[:, None], _sky_colour(scene, rays_world), albedo * shading[:, None])

  flow = np.zeros((num_pixels, 2))
  if frame + 1 < len(scene.times):
    next_point[shape] = (np.einsum("nij,nj->ni", primitives.rotation[frame + 1, hit], local)
                         + primitives.translation[frame + 1, hit])
    next_xy, next_z = camera.project(next_point, frame + 1)
    flow = np.where((next_z > NEAR)[:, None], next_xy - pixel_xy, 0.0)
  return dict(rgb=colour, depth=depth, flow=flow, instance=instance, semantic=semantic,
              part_index=part, uv=uv)


def pixel_rays(camera: world.Camera) -> tuple[np.ndarray, np.ndarray]:
  """Unit camera-frame rays through pixel centres float [H*W, 3] and their (x, y) [H*W, 2]."""
  rows, cols = np.meshgrid(np.arange(camera.height), np.arange(camera.width), indexing="ij")
  pixel_xy = np.stack([cols.ravel(), rows.ravel()], -1).astype(np.float64)
  cx, cy = camera.principal_point
  rays = np.stack([(pixel_xy[:, 0] - cx) / camera.focal, (pixel_xy[:, 1] - cy) / camera.focal,
                   np.ones(len(pixel_xy))], -1)
  return prim.normalize(rays), pixel_xy


def _keypoints(scene, depth, instance):
  """COCO keypoints float32 [T, max(P, 1), 17, 3]: pixel x, y and visibility (0/1).

  Row p belongs to the person with instance p + 1. A keypoint is visible when it is in front of
  the camera, its rounded pixel is inside the frame, shows that person and is not occluded by
  more than KEYPOINT_OCCLUSION_TOLERANCE.
  """
  num_frames, num_persons = scene.person_keypoints.shape[:2]
  out = np.zeros((num_frames, max(num_persons, 1), 17, 3), np.float32)
  height, width = depth.shape[1:]
  person_ids = np.arange(1, num_persons + 1)[:, None]
  for frame in range(num_frames):
    xy, z = scene.camera.project(scene.person_keypoints[frame], frame)  # [P, 17, 2], [P, 17]
    in_front = z > NEAR
    pixel = modality_render.round_to_pixel(np.clip(xy, -1e6, 1e6))  # same rounding as drawing
    col, row = pixel[..., 0], pixel[..., 1]
    inside = in_front & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row = np.clip(col, 0, width - 1), np.clip(row, 0, height - 1)
    visible = (inside & (instance[frame, row, col] == person_ids)
               & (depth[frame, row, col] >= z - KEYPOINT_OCCLUSION_TOLERANCE))
    out[frame, :num_persons, :, :2] = np.where(in_front[..., None], xy, 0.0)
    out[frame, :num_persons, :, 2] = visible
  return out


def render_scene(scene: world.Scene) -> dict[str, np.ndarray]:
  """Renders RGB and ground truth for every frame of `scene`.

  Returns a dict with rgb uint8 [T, H, W, 3], depth float32 [T, H, W] (camera z, metres; sky =
  FAR_DEPTH), flow float32 [T, H, W, 2] (dx, dy pixels), instance int32 [T, H, W], semantic
  int32 [T, H, W] (primitives.SEMANTIC_CLASSES), part_index uint8 [T, H, W] (0..24), uv float32
  [T, H, W, 2] and keypoints float32 [T, max(P, 1), 17, 3].
  """
  camera = scene.camera
  shape = (len(scene.times), camera.height, camera.width)
  rays_camera, pixel_xy = pixel_rays(camera)
  frames = [_render_frame(scene, frame, rays_camera, pixel_xy) for frame in range(shape[0])]
  stacked = {key: np.stack([f[key] for f in frames]) for key in frames[0]}
  out = {
      "rgb": np.clip(np.round(stacked["rgb"] * 255), 0, 255).astype(np.uint8).reshape(*shape, 3),
      "depth": stacked["depth"].astype(np.float32).reshape(shape),
      "flow": stacked["flow"].astype(np.float32).reshape(*shape, 2),
      "instance": stacked["instance"].reshape(shape),
      "semantic": stacked["semantic"].reshape(shape),
      "part_index": stacked["part_index"].astype(np.uint8).reshape(shape),
      "uv": stacked["uv"].astype(np.float32).reshape(*shape, 2),
  }
  out["keypoints"] = _keypoints(scene, out["depth"], out["instance"])
  return out
