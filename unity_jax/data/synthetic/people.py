"""Articulated people: a COCO-17 skeleton dressed in capsules with DensePose-like parts.

Body frame: metres, +y up, +z the direction the person faces, +x the person's left, origin on
the ground below the pelvis. Proportions are those of a 1.7 m adult, scaled by `height / 1.7`.

DensePose-like part ids (24, as DensePose's I channel), pairs are (back, front) halves of a
limb and (right, left) halves of the head:
   1/2 torso              3 right hand        4 left hand         5 left foot      6 right foot
   7/9 right upper leg    8/10 left upper leg  11/13 right lower leg  12/14 left lower leg
  15/17 left upper arm   16/18 right upper arm  19/21 left lower arm  20/22 right lower arm
  23/24 head (right/left)
U runs along a limb from the proximal joint (0) to the distal joint (1), from top (0) to bottom
(1) on the head and hands; V runs around the limb (within each half for split parts).
"""

import dataclasses

import numpy as np

from unity_jax.data import modality_render
from unity_jax.data.synthetic import primitives as prim

COCO_KEYPOINTS = modality_render.COCO_KEYPOINTS
COCO_LIMBS = modality_render.COCO_LIMBS
NUM_PARTS = 24
GAITS = ("walk", "jog", "wave")
GAIT_SPEED = {"walk": 1.3, "jog": 2.6, "wave": 0.0}  # metres per second along the heading
_GAIT_CYCLE_HZ = {"walk": 0.9, "jog": 1.4, "wave": 1.3}
# (thigh swing, knee base, knee swing, arm swing, elbow base, elbow swing), radians.
_GAIT_ANGLES = {
    "walk": (0.42, 0.08, 0.65, 0.35, 0.2, 0.15),
    "jog": (0.65, 0.25, 1.2, 0.55, 1.3, 0.2),
    "wave": (0.0, 0.05, 0.0, 0.06, 0.15, 0.05),
}
_REFERENCE_HEIGHT = 1.7
_DOWN = np.array([0.0, -1.0, 0.0])
_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])

# Body-frame layout of a 1.7 m person (metres).
_HIP_HEIGHT, _HIP_HALF_WIDTH = 0.92, 0.10
_SHOULDER_HEIGHT, _SHOULDER_HALF_WIDTH = 1.42, 0.19
_THIGH, _SHIN, _UPPER_ARM, _FOREARM, _HAND_OFFSET, _FOOT = 0.43, 0.42, 0.29, 0.26, 0.06, 0.16
_ANKLE_HEIGHT = 0.06
_TORSO_BOTTOM, _TORSO_TOP, _TORSO_RADIUS = 0.95, 1.36, 0.15
_HEAD_CENTRE, _HEAD_RADIUS = np.array([0.0, 1.58, 0.01]), 0.11
_FACE_POINTS = {  # Head-frame offsets of the face keypoints (relative to the head centre).
    "nose": (0.0, -0.01, 0.11), "left_eye": (0.035, 0.03, 0.095),
    "right_eye": (-0.035, 0.03, 0.095), "left_ear": (0.105, 0.0, 0.0),
    "right_ear": (-0.105, 0.0, 0.0)}
_SKIN_TONES = ((0.96, 0.80, 0.69), (0.87, 0.67, 0.52), (0.69, 0.48, 0.34), (0.45, 0.30, 0.21))
_HAIR_COLOURS = ((0.1, 0.08, 0.06), (0.35, 0.2, 0.1), (0.8, 0.65, 0.35), (0.55, 0.55, 0.55))


@dataclasses.dataclass(frozen=True)
class PersonSpec:
  """Everything random about one person; `shapes_and_keypoints` turns it into geometry."""
  instance: int
  height: float  # metres
  gait: str  # one of GAITS
  heading: float  # radians; the person faces (sin h, 0, cos h) and walks that way.
  start: tuple[float, float]  # (x, z) of the body origin at frame 0
  phase: float  # gait phase at frame 0, radians
  shirt: tuple[float, float, float]
  trousers: tuple[float, float, float]
  skin: tuple[float, float, float]
  hair: tuple[float, float, float]
  shoes: tuple[float, float, float]
  long_sleeves: bool
  striped_shirt: bool
  clothing_names: tuple[str, str]  # (shirt, trousers) colour names, for captions


def _swing(direction: np.ndarray, angle: np.ndarray) -> np.ndarray:
  """Rotates a body-frame direction [3] about +x by angles [T] (positive: down -> forward)."""
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
  x, y, z = direction
  return np.concatenate([np.full_like(cos, x), y * cos + z * sin, -y * sin + z * cos], axis=-1)


def _body_joints(gait: str, phase: np.ndarray) -> dict[str, np.ndarray]:
  """Body-frame joint positions (1.7 m person) for gait phases [T]: name -> float [T, 3]."""
  thigh_amp, knee_base, knee_amp, arm_amp, elbow_base, elbow_amp = _GAIT_ANGLES[gait]
  num_frames = len(phase)
  joints = {}
  for side, sign, offset in (("left", 1.0, 0.0), ("right", -1.0, np.pi)):
    side_phase = phase + offset
    thigh = thigh_amp * np.sin(side_phase)
    # The knee bends most while the leg swings forward (when the thigh angle is increasing).
    knee_flex = knee_base + knee_amp * np.maximum(0.0, np.cos(side_phase))
    hip = np.tile([sign * _HIP_HALF_WIDTH, _HIP_HEIGHT, 0.0], (num_frames, 1))
    knee = hip + _THIGH * _swing(_DOWN, thigh)
    ankle = knee + _SHIN * _swing(_DOWN, thigh - knee_flex)
    toe = ankle + _FOOT * prim.normalize(_swing(np.array([0.0, -0.25, 1.0]), thigh - knee_flex))
    arm = -arm_amp * np.sin(side_phase)  # Arms swing against the leg of the same side.
    elbow_flex = elbow_base + elbow_amp * np.maximum(0.0, np.sin(side_phase + np.pi))
    shoulder = np.tile([sign * _SHOULDER_HALF_WIDTH, _SHOULDER_HEIGHT, 0.0], (num_frames, 1))
    upper_arm_dir = _swing(_DOWN, arm)
    forearm_dir = _swing(_DOWN, arm + elbow_flex)
    if gait == "wave" and side == "right":  # Right arm raised sideways, forearm waving.
      upper_arm_dir = np.tile(prim.normalize(np.array([-0.55, 0.8, 0.15])), (num_frames, 1))
      sway = 0.5 * np.sin(phase * 2.0)
      forearm_dir = prim.normalize(
          np.stack([-np.sin(sway), np.cos(sway), np.full_like(sway, 0.2)], -1))
    elbow = shoulder + _UPPER_ARM * upper_arm_dir
    wrist = elbow + _FOREARM * forearm_dir
    joints.update({
        f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle, f"{side}_toe": toe,
        f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
        f"{side}_hand": wrist + _HAND_OFFSET * forearm_dir})
  # Keep the lower foot on the ground: lift the whole body (this also makes a jog bounce).
  lift = _ANKLE_HEIGHT - np.minimum(joints["left_ankle"][:, 1], joints["right_ankle"][:, 1])
  lift = np.stack([np.zeros(num_frames), lift, np.zeros(num_frames)], -1)
  joints = {name: value + lift for name, value in joints.items()}
  joints["torso_bottom"] = np.array([0.0, _TORSO_BOTTOM, 0.0]) + lift
  joints["torso_top"] = np.array([0.0, _TORSO_TOP, 0.0]) + lift
  joints["head"] = _HEAD_CENTRE + lift
  return joints


# (proximal joint, distal joint, radius at 1.7 m, (back part, front part), uv mode, reference)
_LIMBS = (
    ("torso_bottom", "torso_top", _TORSO_RADIUS, (1, 2), prim.UV_LIMB, _FORWARD),
    ("left_shoulder", "left_elbow", 0.05, (15, 17), prim.UV_LIMB, _FORWARD),
    ("right_shoulder", "right_elbow", 0.05, (16, 18), prim.UV_LIMB, _FORWARD),
    ("left_elbow", "left_wrist", 0.04, (19, 21), prim.UV_LIMB, _FORWARD),
    ("right_elbow", "right_wrist", 0.04, (20, 22), prim.UV_LIMB, _FORWARD),
    ("left_hip", "left_knee", 0.075, (8, 10), prim.UV_LIMB, _FORWARD),
    ("right_hip", "right_knee", 0.075, (7, 9), prim.UV_LIMB, _FORWARD),
    ("left_knee", "left_ankle", 0.055, (12, 14), prim.UV_LIMB, _FORWARD),
    ("right_knee", "right_ankle", 0.055, (11, 13), prim.UV_LIMB, _FORWARD),
    ("left_ankle", "left_toe", 0.045, (5, 5), prim.UV_WRAP, _UP),
    ("right_ankle", "right_toe", 0.045, (6, 6), prim.UV_WRAP, _UP),
)


def _limb_colour(spec: PersonSpec, proximal: str):
  """(albedo pair, pattern) of the capsule starting at `proximal`."""
  darker = lambda c: tuple(0.55 * v for v in c)
  if proximal.endswith("ankle"):
    return (spec.shoes, darker(spec.shoes)), prim.PLAIN
  if proximal.endswith(("hip", "knee")):
    return (spec.trousers, darker(spec.trousers)), prim.PLAIN
  if proximal.endswith("elbow") and not spec.long_sleeves:
    return (spec.skin, spec.skin), prim.PLAIN
  pattern = prim.STRIPES if spec.striped_shirt else prim.PLAIN
  return (spec.shirt, darker(spec.shirt)), pattern


def shapes_and_keypoints(
    spec: PersonSpec, times: np.ndarray) -> tuple[list[prim.Shape], np.ndarray]:
  """Geometry of one person over frame times [T] (seconds).

  Returns the person's shapes (torso, head, limbs, hands, feet; all with `spec.instance`) and
  the world positions of the 17 COCO keypoints, float64 [T, 17, 3].
  """
  scale = spec.height / _REFERENCE_HEIGHT
  phase = spec.phase + 2 * np.pi * _GAIT_CYCLE_HZ[spec.gait] * times
  joints = {name: scale * value for name, value in _body_joints(spec.gait, phase).items()}
  num_frames = len(times)
  yaw = prim.rotation_y(np.full(num_frames, spec.heading))  # [T, 3, 3] body -> world
  heading = np.array([np.sin(spec.heading), 0.0, np.cos(spec.heading)])
  root = (np.array([spec.start[0], 0.0, spec.start[1]])
          + GAIT_SPEED[spec.gait] * times[:, None] * heading)

  def to_world(points):  # body-frame [T, 3] -> world [T, 3]
    return np.einsum("tij,tj->ti", yaw, points) + root

  common = dict(instance=spec.instance, semantic=prim.SEMANTIC_ID["person"])
  shapes = []
  for proximal, distal, radius, parts, uv_mode, reference in _LIMBS:
    bone = joints[distal] - joints[proximal]
    local_frame = prim.frame_from_axis(bone, np.broadcast_to(reference, bone.shape))
    colour, pattern = _limb_colour(spec, proximal)
    shapes.append(prim.Shape(
        kind=prim.CAPSULE, size=(radius * scale, float(np.linalg.norm(bone[0])), 0.0),
        rotation=yaw @ local_frame, translation=to_world(joints[proximal]), colour=colour,
        pattern=pattern, pattern_scale=0.08 * scale, parts=parts, uv_mode=uv_mode, **common))
  shapes.append(prim.Shape(
      kind=prim.SPHERE, size=(_HEAD_RADIUS * scale, 0.0, 0.0), rotation=yaw,
      translation=to_world(joints["head"]), colour=(spec.skin, spec.hair), pattern=prim.HAIR,
      parts=(23, 24), uv_mode=prim.UV_HEAD, **common))
  for side, part in (("left", 4), ("right", 3)):
    hand_frame = prim.frame_from_axis(joints[f"{side}_hand"] - joints[f"{side}_elbow"],
                                      np.broadcast_to(_FORWARD, (num_frames, 3)))
    shapes.append(prim.Shape(
        kind=prim.SPHERE, size=(0.045 * scale, 0.0, 0.0), rotation=yaw @ hand_frame,
        translation=to_world(joints[f"{side}_hand"]), colour=(spec.skin, spec.skin),
        parts=(part, part), uv_mode=prim.UV_WRAP, **common))

  face = {name: to_world(joints["head"] + scale * np.asarray(offset))
          for name, offset in _FACE_POINTS.items()}
  keypoints = np.stack(
      [face[name] if name in face else to_world(joints[name]) for name in COCO_KEYPOINTS], 1)
  return shapes, keypoints


def sample_person(rng: np.random.Generator, instance: int, gait: str,
                  colours: dict[str, tuple[float, float, float]]) -> PersonSpec:
  """Random appearance for one person; the caller sets position and heading with `replace`.

  `colours` maps clothing colour names to albedo in [0, 1].
  """
  names = list(colours)
  shirt, trousers, shoes = (names[i] for i in rng.choice(len(names), 3, replace=False))
  skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
  hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))]
  return PersonSpec(
      instance=instance, height=float(rng.uniform(1.55, 1.9)), gait=gait, heading=0.0,
      start=(0.0, 0.0), phase=float(rng.uniform(0, 2 * np.pi)), shirt=colours[shirt],
      trousers=colours[trousers], skin=skin, hair=hair, shoes=colours[shoes],
      long_sleeves=bool(rng.random() < 0.5), striped_shirt=bool(rng.random() < 0.35),
      clothing_names=(shirt, trousers))
