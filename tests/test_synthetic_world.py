"""Synthetic world: the clip contract, determinism, and exactness of the ground truth.

Geometry is checked against formulas written independently here (plane intersection, sphere
distance, signed distance functions of every shape), flow by re-casting rays at frame t+1 and by
warping frames, keypoints against the instance masks.
"""

import dataclasses
import functools
import pickle
import time

import numpy as np
import pytest

from unity_jax import constants
from unity_jax.data import synthetic
from unity_jax.data.synthetic import generate_clip
from unity_jax.data.synthetic import people
from unity_jax.data.synthetic import primitives as prim
from unity_jax.data.synthetic import renderer
from unity_jax.data.synthetic import world

SOURCES = constants.SOURCES
SCENES = tuple((source, seed) for source in SOURCES for seed in (0, 1))


@functools.lru_cache(maxsize=None)
def _clip(source, seed):
  return generate_clip(seed, source)


@functools.lru_cache(maxsize=None)
def _scene(source, seed, shaded=True):
  scene = world.sample_scene(seed, source)
  return scene, renderer.render_scene(scene, shaded=shaded)


def _backproject(scene, depth, frame):
  """World points float [H*W, 3] of every pixel of `frame` from its z-depth."""
  rays, _ = renderer.pixel_rays(scene.camera)
  rays_world = rays @ scene.camera.rotation[frame]
  distance = depth[frame].reshape(-1) / rays[:, 2]
  return scene.camera.position[frame] + distance[:, None] * rays_world


def _signed_distances(primitives, frame, points):
  """Signed distance of world points [n, 3] to each shape, float [n, K] (independent formulas)."""
  local = np.einsum("kji,nkj->nki", primitives.rotation[frame],
                    points[:, None] - primitives.translation[frame])
  size = primitives.size
  x, y, z = local[..., 0], local[..., 1], local[..., 2]
  sphere = np.linalg.norm(local, axis=-1) - size[:, 0]
  capsule = np.linalg.norm(local - np.stack(
      [0 * y, np.clip(y, 0, size[:, 1]), 0 * y], -1), axis=-1) - size[:, 0]
  q = np.abs(local) - size
  box = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
  d = np.stack([np.hypot(x, z) - size[:, 0], np.abs(y) - size[:, 1]], -1)
  cylinder = np.minimum(d.max(-1), 0) + np.linalg.norm(np.maximum(d, 0), axis=-1)
  return np.choose(primitives.kind, [sphere, capsule, box, cylinder])


# ---------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("source", SOURCES)
def test_clip_matches_contract(source):
  clip = _clip(source, 0)
  num_frames, height, width = 17, 64, 64
  assert clip["id"] == f"synth-{source}-0" and clip["source"] == source
  assert isinstance(clip["caption"], str) and clip["caption"]
  assert isinstance(clip["segmentation_targets"], str) and clip["segmentation_targets"]
  persons = clip["person_count"]
  assert isinstance(persons, int)
  assert persons == {"single_person": 1, "two_person": 2, "general": 0}.get(source, persons)
  assert clip["rgb"].dtype == np.uint8 and clip["rgb"].shape == (num_frames, height, width, 3)
  assert set(clip["modalities"]) == set(constants.MODALITIES)
  for name, video in clip["modalities"].items():
    assert video.dtype == np.uint8 and video.shape == clip["rgb"].shape, name
  assert clip["available"] == {name: persons > 0 or name not in ("skeleton", "densepose")
                               for name in constants.MODALITIES}
  if not persons:
    assert not clip["modalities"]["skeleton"].any() and not clip["modalities"]["densepose"].any()
  gt = clip["gt"]
  expected = {
      "depth": (np.float32, (num_frames, height, width)),
      "flow": (np.float32, (num_frames, height, width, 2)),
      "instance": (np.int32, (num_frames, height, width)),
      "semantic": (np.int32, (num_frames, height, width)),
      "keypoints": (np.float32, (num_frames, max(persons, 1), 17, 3)),
      "part_index": (np.uint8, (num_frames, height, width)),
      "uv": (np.float32, (num_frames, height, width, 2)),
  }
  assert set(gt) == set(expected)
  for key, (dtype, shape) in expected.items():
    assert gt[key].dtype == dtype and gt[key].shape == shape, key
  assert (gt["depth"] > 0).all() and gt["depth"].max() <= renderer.FAR_DEPTH
  assert not gt["flow"][-1].any()
  assert set(np.unique(gt["keypoints"][..., 2])) <= {0.0, 1.0}
  if not persons:
    assert not gt["keypoints"].any()
  # Persons have ids 1..P, objects follow; person pixels carry parts, nothing else does.
  person_pixels = (gt["instance"] >= 1) & (gt["instance"] <= persons)
  np.testing.assert_array_equal(gt["semantic"] == synthetic.SEMANTIC_CLASSES.index("person"),
                                person_pixels)
  np.testing.assert_array_equal(gt["part_index"] > 0, person_pixels)
  assert gt["part_index"].max() <= 24 and gt["semantic"].max() < len(synthetic.SEMANTIC_CLASSES)
  assert (gt["uv"] >= 0).all() and (gt["uv"] <= 1).all() and not gt["uv"][~person_pixels].any()
  assert (gt["semantic"][gt["instance"] == 0] <= 1).all()  # sky or ground


def test_generate_clip_is_the_rendered_scene():
  clip = _clip("two_person", 1)
  _, rendered = _scene("two_person", 1)
  np.testing.assert_array_equal(clip["rgb"], rendered["rgb"])
  for key in synthetic.GT_KEYS:
    np.testing.assert_array_equal(clip["gt"][key], rendered[key])


def test_same_seed_same_clip_and_different_seeds_differ():
  first, again = generate_clip(5, "single_person"), generate_clip(5, "single_person")
  for key in ("id", "caption", "person_count", "segmentation_targets"):
    assert first[key] == again[key]
  np.testing.assert_array_equal(first["rgb"], again["rgb"])
  for name in constants.MODALITIES:
    np.testing.assert_array_equal(first["modalities"][name], again["modalities"][name])
  for key in synthetic.GT_KEYS:
    np.testing.assert_array_equal(first["gt"][key], again["gt"][key])
  assert not np.array_equal(first["rgb"], generate_clip(6, "single_person")["rgb"])
  assert not np.array_equal(first["rgb"], generate_clip(5, "two_person")["rgb"])


def test_other_sizes_and_single_frame_clips():
  clip = generate_clip(3, "two_person", num_frames=4, height=40, width=56)
  assert clip["rgb"].shape == (4, 40, 56, 3) and clip["gt"]["flow"].shape == (4, 40, 56, 2)
  assert clip["modalities"]["skeleton"].shape == (4, 40, 56, 3)
  single = generate_clip(3, "general", num_frames=1)
  assert single["rgb"].shape[0] == 1 and not single["gt"]["flow"].any()


def test_generate_clip_pickles_for_worker_pools():
  assert pickle.loads(pickle.dumps(generate_clip)) is generate_clip


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown source"):
    generate_clip(0, "koala")
  with pytest.raises(ValueError, match="seed"):
    generate_clip(-1, "general")


def test_eval_seeds_are_offset_from_training_seeds():
  assert synthetic.eval_seed(0) == synthetic.EVAL_SEED_OFFSET == 10**6
  assert synthetic.eval_seed(7) == 10**6 + 7


def test_generation_is_fast():
  generate_clip(0, "general")  # warm-up (imports, caches)
  start = time.perf_counter()
  for seed, source in enumerate(SOURCES):
    generate_clip(100 + seed, source)
  seconds_per_clip = (time.perf_counter() - start) / len(SOURCES)
  assert seconds_per_clip < 1.0, f"{seconds_per_clip:.3f} s per 17x64x64 clip"


# ------------------------------------------------------------------------ exact ground truth


@pytest.mark.parametrize("source,seed", SCENES)
def test_ground_depth_matches_plane_intersection(source, seed):
  scene, out = _scene(source, seed)
  rays, _ = renderer.pixel_rays(scene.camera)
  for frame in (0, len(scene.times) - 1):
    rays_world = rays @ scene.camera.rotation[frame]
    distance = -scene.camera.position[frame, 1] / rays_world[:, 1]  # ray meets y = 0
    expected = (distance * rays[:, 2]).reshape(out["depth"].shape[1:])
    ground = out["semantic"][frame] == synthetic.SEMANTIC_CLASSES.index("ground")
    assert ground.any()
    np.testing.assert_allclose(out["depth"][frame][ground], expected[ground], rtol=1e-5)


def test_sphere_centre_pixel_depth_is_distance_minus_radius():
  scene, _ = _scene("general", 0)
  num_frames = len(scene.times)
  # A level camera 3 m up, moving sideways; spheres float in the upper half of the view.
  position = np.stack([np.linspace(0, 1, num_frames), np.full(num_frames, 3.0),
                       np.full(num_frames, -8.0)], -1)
  camera = dataclasses.replace(scene.camera, position=position,
                               rotation=prim.look_at(position, position + [0.0, 0.0, 1.0]))
  rays, _ = renderer.pixel_rays(camera)
  shapes = []
  pixels = ((20, 30, 4.0, 0.5), (12, 50, 7.5, 1.2))  # (row, col, centre distance, radius)
  for instance, (row, col, distance, radius) in enumerate(pixels, start=1):
    direction = rays[row * camera.width + col] @ camera.rotation  # [T, 3] world, per frame
    centre = camera.position + distance * direction
    shapes.append(prim.Shape(
        kind=prim.SPHERE, size=(radius, 0.0, 0.0), rotation=np.tile(np.eye(3), (num_frames, 1, 1)),
        translation=centre, instance=instance, semantic=prim.SEMANTIC_ID["ball"],
        colour=((1.0, 0.0, 0.0), (1.0, 1.0, 1.0))))
  custom = dataclasses.replace(scene, camera=camera,
                               primitives=prim.stack_shapes(shapes, num_frames),
                               person_keypoints=np.zeros((num_frames, 0, 17, 3)), entities=())
  out = renderer.render_scene(custom)
  for instance, (row, col, distance, radius) in enumerate(pixels, start=1):
    ray_z = rays[row * camera.width + col, 2]
    np.testing.assert_allclose(out["depth"][:, row, col], (distance - radius) * ray_z, rtol=1e-6)
    assert (out["instance"][:, row, col] == instance).all()


@pytest.mark.parametrize("source,seed", SCENES)
def test_visible_surfaces_lie_on_the_shapes(source, seed):
  scene, out = _scene(source, seed)
  for frame in (0, len(scene.times) // 2):
    points = _backproject(scene, out["depth"], frame)
    union = _signed_distances(scene.primitives, frame, points).min(-1)
    instance = out["instance"][frame].reshape(-1)
    ground = out["semantic"][frame].reshape(-1) == synthetic.SEMANTIC_CLASSES.index("ground")
    assert np.abs(union[instance > 0]).max() < 1e-4  # on a shape surface
    assert np.abs(points[ground, 1]).max() < 1e-4  # on the ground plane ...
    assert union[ground].min() > -1e-4  # ... and not inside any shape


@pytest.mark.parametrize("source,seed", SCENES)
def test_flow_lands_on_the_same_surface_point_at_the_next_frame(source, seed):
  """Re-casts a ray at frame t+1 through p + flow: it must hit the moved point or an occluder."""
  scene, out = _scene(source, seed)
  camera, primitives = scene.camera, scene.primitives
  rays, pixel_xy = renderer.pixel_rays(camera)
  cx, cy = camera.principal_point
  checked = 0
  for frame in range(0, len(scene.times) - 1, 4):
    origin, rays_world = camera.position[frame], rays @ camera.rotation[frame]
    distance, index = renderer.nearest_hits(primitives, frame, origin, rays_world)
    on_shape = index >= 0
    point = origin + distance[on_shape, None] * rays_world[on_shape]
    shape = index[on_shape]
    local = np.einsum("nji,nj->ni", primitives.rotation[frame, shape],
                      point - primitives.translation[frame, shape])
    moved = (np.einsum("nij,nj->ni", primitives.rotation[frame + 1, shape], local)
             + primitives.translation[frame + 1, shape])
    target = pixel_xy[on_shape] + out["flow"][frame].reshape(-1, 2)[on_shape]
    inside = ((target >= 0) & (target <= [camera.width - 1, camera.height - 1])).all(-1)
    new_rays = prim.normalize(np.stack([(target[:, 0] - cx) / camera.focal,
                                        (target[:, 1] - cy) / camera.focal,
                                        np.ones(len(target))], -1)) @ camera.rotation[frame + 1]
    new_distance, _ = renderer.nearest_hits(primitives, frame + 1, camera.position[frame + 1],
                                            new_rays)
    hit = camera.position[frame + 1] + new_distance[:, None] * new_rays
    moved_distance = np.linalg.norm(moved - camera.position[frame + 1], axis=-1)
    same_point = np.linalg.norm(hit - moved, axis=-1) < 1e-5
    occluded = new_distance < moved_distance - 1e-5
    assert (same_point | occluded)[inside].all()
    assert same_point[inside].mean() > 0.5  # Occlusion explains some pixels, not most.
    checked += inside.sum()
  assert checked > 300


def _warp_errors(rgb, gt, min_flow=0.5):
  """Backward-warp errors of moving, non-occluded pixels: (GT flow errors, zero-flow errors)."""
  rgb = rgb.astype(np.float64)
  num_frames, height, width = rgb.shape[:3]
  ys, xs = np.mgrid[0:height, 0:width]
  warp_errors, still_errors = [], []
  for frame in range(num_frames - 1):
    flow = gt["flow"][frame]
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    x0 = np.clip(np.floor(tx).astype(int), 0, width - 2)
    y0 = np.clip(np.floor(ty).astype(int), 0, height - 2)
    fx, fy = (tx - x0)[..., None], (ty - y0)[..., None]
    after = rgb[frame + 1]
    warped = ((1 - fx) * (1 - fy) * after[y0, x0] + fx * (1 - fy) * after[y0, x0 + 1]
              + (1 - fx) * fy * after[y0 + 1, x0] + fx * fy * after[y0 + 1, x0 + 1])
    inside = (tx >= 0) & (tx <= width - 1) & (ty >= 0) & (ty <= height - 1)
    nearest = (np.clip(np.floor(ty + 0.5).astype(int), 0, height - 1),
               np.clip(np.floor(tx + 0.5).astype(int), 0, width - 1))
    same_instance = gt["instance"][frame + 1][nearest] == gt["instance"][frame]
    valid = inside & same_instance & (np.linalg.norm(flow, axis=-1) >= min_flow)
    warp_errors.append(np.abs(warped - rgb[frame]).mean(-1)[valid])
    still_errors.append(np.abs(after - rgb[frame]).mean(-1)[valid])
  return np.concatenate(warp_errors), np.concatenate(still_errors)


@pytest.mark.parametrize("shaded,max_ratio", [(False, 0.5), (True, 0.6)])
def test_flow_warps_each_frame_onto_the_next(shaded, max_ratio):
  """Photometric check over all sources. Unshaded renders keep a point's colour exactly; shaded
  ones change it a little as normals turn (Lambertian), hence the looser ratio."""
  warp, still = [], []
  for source in SOURCES:
    for seed in (0, 1):
      _, out = _scene(source, seed, shaded)
      errors = _warp_errors(out["rgb"], out)
      warp.append(errors[0])
      still.append(errors[1])
  warp, still = np.concatenate(warp), np.concatenate(still)
  assert len(warp) > 10000
  assert warp.mean() < max_ratio * still.mean()
  assert warp.mean() < 4.0  # grey levels out of 255


@pytest.mark.parametrize("source,seed", SCENES)
def test_visible_keypoints_project_inside_their_person_mask(source, seed):
  clip = _clip(source, seed)
  keypoints, instance = clip["gt"]["keypoints"], clip["gt"]["instance"]
  visible = keypoints[..., 2] > 0
  if clip["person_count"] == 0:
    assert not visible.any()
    return
  assert visible.mean() > 0.5
  frames, persons, _ = np.nonzero(visible)
  cols = np.floor(keypoints[..., 0][visible] + 0.5).astype(int)
  rows = np.floor(keypoints[..., 1][visible] + 0.5).astype(int)
  np.testing.assert_array_equal(instance[frames, rows, cols], persons + 1)


def test_keypoints_are_projections_of_the_skeleton():
  scene, out = _scene("two_person", 0)
  for frame in (0, 9):
    xy, _ = scene.camera.project(scene.person_keypoints[frame], frame)
    np.testing.assert_allclose(out["keypoints"][frame, ..., :2], xy, atol=1e-3)


def test_densepose_parts_cover_the_body_on_the_correct_side():
  scene = world.sample_scene(1, "subject_centric", num_frames=3, height=128, width=128)
  assert scene.person_count == 1
  out = renderer.render_scene(scene)
  assert len(np.unique(out["part_index"])) >= 17  # background + most of the 24 parts
  # Each limb part lies nearer its own bone than the mirrored bone of the other side.
  named = {name: index for index, name in enumerate(people.COCO_KEYPOINTS)}
  rows, cols = np.mgrid[0:128, 0:128]
  checks = {(8, 10): ("left_hip", "left_knee", "right_hip", "right_knee"),
            (7, 9): ("right_hip", "right_knee", "left_hip", "left_knee"),
            (12, 14): ("left_knee", "left_ankle", "right_knee", "right_ankle"),
            (11, 13): ("right_knee", "right_ankle", "left_knee", "left_ankle")}
  tested = 0
  for frame in range(3):
    joints = out["keypoints"][frame, 0, :, :2]
    for parts, (a, b, mirror_a, mirror_b) in checks.items():
      mask = np.isin(out["part_index"][frame], parts)
      if mask.sum() < 10:
        continue
      pixels = np.stack([cols[mask], rows[mask]], -1).astype(np.float64)

      def bone_distance(start, end):
        p, q = joints[named[start]], joints[named[end]]
        t = np.clip(((pixels - p) @ (q - p)) / max((q - p) @ (q - p), 1e-9), 0, 1)
        return np.linalg.norm(pixels - p - t[:, None] * (q - p), axis=-1)

      assert np.median(bone_distance(a, b)) < np.median(bone_distance(mirror_a, mirror_b))
      tested += 1
  assert tested >= 4


# ---------------------------------------------------------------------------------- captions


@pytest.mark.parametrize("source", SOURCES)
def test_captions_name_people_objects_and_camera(source):
  for seed in range(3):
    clip = _clip(source, seed) if seed < 2 else generate_clip(seed, source)
    scene = world.sample_scene(seed, source)
    caption, targets = clip["caption"], clip["segmentation_targets"]
    assert "The camera" in caption
    for entity in scene.entities:
      assert entity.description in caption.lower()
      if entity.noun != "person":  # persons are counted in the targets ("two persons")
        assert entity.description in targets
    persons = clip["person_count"]
    if persons == 2:
      assert caption.startswith("Two people") and targets.startswith("two persons")
    elif persons == 1:
      assert "a person" in targets
    else:
      assert "person" not in caption and "person" not in targets
