"""Captions and segmentation targets generated from a synthetic scene's description.

Directions ("to the left", "towards the camera") are measured in the first frame's camera view,
so a caption says what a viewer of the clip sees.
"""

import numpy as np

from unity_jax.data.synthetic import world

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MOVERS = ("walks", "jogs", "rolls", "slides")
_PRESENT_PARTICIPLE = {"walks": "walking", "jogs": "jogging", "waves": "waving",
                       "rolls": "rolling", "bounces": "bouncing", "spins": "spinning",
                       "slides": "sliding", "rests": "resting"}


def _direction(scene: world.Scene, entity: world.Entity) -> str:
  """Where an entity travels over the clip as seen from the first camera ("" if it stays)."""
  displacement = scene.camera.rotation[0] @ (entity.path[-1] - entity.path[0])
  if entity.action not in _MOVERS or np.hypot(displacement[0], displacement[2]) < 0.3:
    return ""
  if abs(displacement[0]) >= abs(displacement[2]):
    return "to the right" if displacement[0] > 0 else "to the left"
  return "away from the camera" if displacement[2] > 0 else "towards the camera"


def _verb_phrase(scene: world.Scene, entity: world.Entity) -> str:
  action = {"spins": "spins in place", "rests": "rests on the ground"}.get(
      entity.action, entity.action)
  direction = _direction(scene, entity)
  return f"{action} {direction}" if direction else action


def _join(items: list[str]) -> str:
  if len(items) <= 1:
    return "".join(items)
  return ", ".join(items[:-1]) + " and " + items[-1]


def _capitalised(text: str) -> str:
  return text[:1].upper() + text[1:]


def segmentation_targets(scene: world.Scene) -> str:
  """Names of everything with an instance mask: "two persons and a red ball"."""
  persons = scene.person_count
  names = [] if persons == 0 else ["a person" if persons == 1
                                   else f"{_NUMBER_WORDS[persons]} persons"]
  names += [e.description for e in scene.entities if e.noun != "person"]
  return _join(names) if names else "the background"


def caption(scene: world.Scene) -> str:
  """One or two English sentences naming people, objects, colours, motions and the camera."""
  clauses = [f"{e.description} {_verb_phrase(scene, e)}" for e in scene.entities]
  camera = f"The camera {scene.camera_phrase}."
  if scene.source == "subject_centric":
    subject = scene.entities[0]
    direction = _direction(scene, subject)
    lead = (f"Close-up of {subject.description} {_PRESENT_PARTICIPLE[subject.action]}"
            f"{' ' + direction if direction else ''} on {scene.setting}.")
    rest = clauses[1:]
    return " ".join([lead] + ([_capitalised(_join(rest)) + " in the background."] if rest else [])
                    + [camera])
  persons = scene.person_count
  if persons:
    count = "One person" if persons == 1 else f"{_capitalised(_NUMBER_WORDS[persons])} people"
    lead = f"{count} on {scene.setting}: {_join(clauses[:persons])}."
    rest = clauses[persons:]
    body = [lead] + ([_capitalised(_join(rest)) + "."] if rest else [])
  else:
    count = len(scene.entities)
    noun = "object" if count == 1 else "objects"
    body = [f"{_capitalised(_NUMBER_WORDS[count])} {noun} on {scene.setting}: {_join(clauses)}."]
  return " ".join(body + [camera])
