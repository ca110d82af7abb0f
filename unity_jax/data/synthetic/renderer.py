"""Vectorised numpy ray caster for synthetic scenes, with exact per-frame ground truth.

One ray per pixel centre is intersected analytically with every shape (in the shape's local
frame) and with the ground plane y = 0; the nearest hit gives depth, instance, semantic class,
DensePose part and UV, and a Lambertian-shaded textured colour. Rays that hit nothing, or hit
beyond FAR_DEPTH, see the sky.

Forward flow is exact: the surface point hit at frame t is expressed in its shape's local frame,
moved with the shape's pose at t+1 (ground and sky are static; sky points sit at FAR_DEPTH) and
projected with camera t+1; flow = p_{t+1} - p_t in pixels. Occlusion at t+1 is not modelled
(as for any forward flow). The last frame's flow is zero, and so is the flow of the (rare)
points that move behind the camera.
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


# Ray-shape tests run in each shape's local frame on arrays laid out [k shapes, N rays]:
# origin o float [k, 3, 1] (all rays start at the camera), unit directions d float [k, 3, N].
# They return distances along the rays float [k, N], inf on a miss.


def _side_hits(o, d, radius):
  """Rays against infinite y-axis cylinders: (t, height at t, hit mask), each [k, N]."""
  a = 1.0 - d[:, 1] ** 2
  b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
  c = o[:, 0] ** 2 + o[:, 2] ** 2 - radius[:, None] ** 2
  disc = b * b - a * c
  with np.errstate(divide="ignore", invalid="ignore"):
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
  height = o[:, 1] + t * d[:, 1]
  return t, height, (disc >= 0) & (a > 1e-12) & (t > NEAR)


def _hit_spheres(o, d, size):
  b = (o * d).sum(1)
  c = (o * o).sum(1) - size[:, :1] ** 2
  disc = b * b - c
  t = -b - np.sqrt(np.maximum(disc, 0.0))
  return np.where((disc >= 0) & (t > NEAR), t, np.inf)


def _hit_capsules(o, d, size):
  """A capsule is the union of its side and two end balls, so its hit is the nearest of them."""
  radius, length = size[:, 0], size[:, 1]
  t, height, ok = _side_hits(o, d, radius)
  side = np.where(ok & (height >= 0) & (height <= length[:, None]), t, np.inf)
  end = o - np.stack([np.zeros_like(length), length, np.zeros_like(length)], -1)[..., None]
  return np.minimum(side, np.minimum(_hit_spheres(o, d, size), _hit_spheres(end, d, size)))


def _hit_boxes(o, d, size):
  with np.errstate(divide="ignore", invalid="ignore"):
    t1 = (-size[..., None] - o) / d
    t2 = (size[..., None] - o) / d
  t_near = np.minimum(t1, t2).max(1)
  t_far = np.maximum(t1, t2).min(1)
  return np.where((t_near <= t_far) & (t_near > NEAR), t_near, np.inf)


def _hit_cylinders(o, d, size):
  radius, half_height = size[:, 0, None], size[:, 1, None]
  t, height, ok = _side_hits(o, d, size[:, 0])
  side = np.where(ok & (np.abs(height) <= half_height), t, np.inf)
  # Only the cap facing the camera can be hit first, and only from beyond its plane.
  cap_height = np.sign(o[:, 1]) * half_height
  with np.errstate(divide="ignore", invalid="ignore"):
    t_cap = (cap_height - o[:, 1]) / d[:, 1]
  cap_x, cap_z = o[:, 0] + t_cap * d[:, 0], o[:, 2] + t_cap * d[:, 2]
  cap_ok = ((np.abs(o[:, 1]) > half_height) & (t_cap > NEAR)
            & (cap_x ** 2 + cap_z ** 2 <= radius ** 2))
  return np.minimum(side, np.where(cap_ok, t_cap, np.inf))


_HIT_FUNCTIONS = {prim.SPHERE: _hit_spheres, prim.CAPSULE: _hit_capsules, prim.BOX: _hit_boxes,
                  prim.CYLINDER: _hit_cylinders}


def nearest_hits(primitives, frame, origin, directions):
  """Nearest hit per ray: (distance float [N], shape index int [N]; _GROUND / _SKY).

  origin: float [3] world camera centre; directions: float [N, 3] unit world rays.
  """
  count = primitives.count
  distances = np.full((count + 1, len(directions)), np.inf)
  with np.errstate(divide="ignore", invalid="ignore"):
    t_ground = -origin[1] / directions[:, 1]
  distances[count] = np.where((directions[:, 1] < 0) & (t_ground > NEAR), t_ground, np.inf)
  # Cull with bounding spheres: each shape kind is only tested against the rays that pass
  # near one of its members (people cover a small part of the frame).
  centres, radii = prim.bounding_spheres(primitives, frame)
  to_centre = centres - origin  # [K, 3]
  along = to_centre @ directions.T  # [K, N]
  near = ((to_centre ** 2).sum(-1)[:, None] - along ** 2 <= radii[:, None] ** 2) & (
      along > -radii[:, None])
  for kind, hit in _HIT_FUNCTIONS.items():
    members = np.nonzero(primitives.kind == kind)[0]
    rays = np.nonzero(near[members].any(0))[0] if len(members) else members
    if len(rays):
      to_local = primitives.rotation[frame, members].transpose(0, 2, 1)  # world -> local
      local_origin = to_local @ (origin - primitives.translation[frame, members])[..., None]
      distances[np.ix_(members, rays)] = hit(local_origin, to_local @ directions[rays].T,
                                             primitives.size[members])
  nearest = np.argmin(distances, axis=0)
  distance = distances[nearest, np.arange(len(directions))]
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


def _contrast(cell_size, footprint):
  """Texture contrast kept at a pixel: 1 for cells >= 2 pixels wide, fading to 0 below 2/3 px.

  A cheap stand-in for mip-mapping: textures finer than a pixel would alias into noise that
  flickers under motion, so they fade to their mean colour instead.
  """
  cell_pixels = cell_size / np.maximum(footprint, 1e-9)
  return np.clip((cell_pixels - 2 / 3) / (2 - 2 / 3), 0.0, 1.0)


def _pattern(pattern, scale, size, point, footprint):
  """Weight of the second albedo at each local hit point, float [n] in [0, 1].

  footprint: float [n], metres of surface covered by one pixel at the hit.
  """
  cells = np.floor(point / scale[:, None]).astype(np.int64)
  azimuth = np.arctan2(point[:, 2], point[:, 0]) / (2 * np.pi) + 0.5
  radius = size[:, 0]
  sector_size = 2 * np.pi * radius / np.maximum(scale, 1.0)
  choices = {  # pattern -> (0/1 value, cell size in metres)
      prim.STRIPES: (cells[:, 1] % 2, scale),
      prim.CHECKER: (cells.sum(-1) % 2, scale),
      prim.SECTORS: (np.floor(azimuth * scale).astype(np.int64) % 2, sector_size),
      prim.HAIR: ((point[:, 1] > 0.35 * radius) | (point[:, 2] < -0.3 * radius), radius),
  }
  weight = np.zeros(len(point))
  for kind, (value, cell_size) in choices.items():
    filtered = 0.5 + (value - 0.5) * _contrast(cell_size, footprint)
    weight = np.where(pattern == kind, filtered, weight)
  return weight


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


def _ground_albedo(scene, point, footprint):
  cells = np.floor(point[:, [0, 2]] / scene.ground_tile).astype(np.int64)
  weight = 0.5 + ((cells.sum(-1) % 2) - 0.5) * _contrast(scene.ground_tile, footprint)
  first, second = scene.ground_colours
  albedo = first + weight[:, None] * (second - first)
  variation = 1.0 + 0.08 * np.sin(0.9 * point[:, 0]) * np.sin(1.3 * point[:, 2])
  return albedo * variation[:, None]


def _render_frame(scene, frame, rays_camera, pixel_xy, shaded):
  """All per-pixel outputs of one frame, flattened over pixels."""
  camera, primitives = scene.camera, scene.primitives
  origin = camera.position[frame]
  rays_world = rays_camera @ camera.rotation[frame]  # rows: R^T d
  distance, index = nearest_hits(primitives, frame, origin, rays_world)
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

  def footprint(normals, where):
    """Surface length seen by one pixel: depth / focal, stretched on surfaces seen at a slant."""
    slant = np.maximum(np.abs(np.sum(normals * rays_world[where], -1)), 0.05)
    return depth[where] / camera.focal / slant

  albedo[ground] = _ground_albedo(scene, point[ground], footprint(normal[ground], ground))
  next_point = point.copy()  # ground and sky are static

  hit = index[shape]
  rotation = primitives.rotation[frame, hit]
  local = np.einsum("nji,nj->ni", rotation, point[shape] - primitives.translation[frame, hit])
  kind, size = primitives.kind[hit], primitives.size[hit]
  normal[shape] = np.einsum("nij,nj->ni", rotation, _local_normals(kind, size, local))
  weight = _pattern(primitives.pattern[hit], primitives.pattern_scale[hit], size, local,
                    footprint(normal[shape], shape))[:, None]
  colours = primitives.colour[hit]
  albedo[shape] = colours[:, 0] + weight * (colours[:, 1] - colours[:, 0])
  instance[shape] = primitives.instance[hit]
  semantic[shape] = primitives.semantic[hit]
  part[shape], uv[shape] = _parts_and_uv(primitives, hit, local)

  shading = _AMBIENT + (1 - _AMBIENT) * np.maximum(0.0, normal @ scene.light) if shaded else 1.0
  colour = np.where(sky[:, None], _sky_colour(scene, rays_world),
                    albedo * np.reshape(shading, (-1, 1)))

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


def render_scene(scene: world.Scene, shaded: bool = True) -> dict[str, np.ndarray]:
  """Renders RGB and ground truth for every frame of `scene`.

  `shaded=False` renders bare albedo (texture without lighting): a surface point then keeps its
  colour exactly as it moves, which isolates flow errors from shading changes in tests.

  Returns a dict with rgb uint8 [T, H, W, 3], depth float32 [T, H, W] (camera z, metres; sky =
  FAR_DEPTH), flow float32 [T, H, W, 2] (dx, dy pixels), instance int32 [T, H, W], semantic
  int32 [T, H, W] (primitives.SEMANTIC_CLASSES), part_index uint8 [T, H, W] (0..24), uv float32
  [T, H, W, 2] and keypoints float32 [T, max(P, 1), 17, 3].
  """
  camera = scene.camera
  shape = (len(scene.times), camera.height, camera.width)
  rays_camera, pixel_xy = pixel_rays(camera)
  frames = [_render_frame(scene, frame, rays_camera, pixel_xy, shaded)
            for frame in range(shape[0])]
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
