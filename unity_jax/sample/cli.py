r"""`unity-sample`: sample a trained workdir from the command line (docs/sampling.md).

  unity-sample --workdir runs/tiny --task joint --modality depth --prompt "a red ball" --out a.mp4
  unity-sample --workdir runs/tiny --task control --modality depth --input depth.npy \
      --prompt "a person waves" --out b.mp4
  unity-sample --workdir runs/tiny --task estimate --modality flow --input clip.mp4 --out c.png

--out receives the side-by-side grid (RGB | modality [| --ground-truth]) as .mp4, .gif, .png
(frame sheet) or .npy; --save-streams also writes <out>.rgb.<ext>, <out>.modality.<ext> and the
decoded values <out>.values.npz. Inputs are .mp4 / .gif / .npy videos of the model's clip size;
keep modality conditions as .npy (mp4's chroma subsampling blurs their flat colours).
Exit status 2 with a one-line message on bad arguments, inputs or workdirs.
"""

import argparse
import os
import sys

import numpy as np

from unity_jax import constants
from unity_jax import host_allocator
from unity_jax import io_utils

CLI_TASKS = ("joint", "control", "estimate")


def build_parser() -> argparse.ArgumentParser:
  # Imported here, not at module level: `main` re-executes the process (host_allocator) before
  # building the parser, and jax should be imported only once, after that.
  from unity_jax.flow import samplers  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="unity-sample", description="Sample a unity-train workdir: joint generation, "
      "control (modality video -> RGB) or estimation (RGB video -> modality).")
  parser.add_argument("--workdir", required=True, help="unity-train workdir (checkpoints/)")
  parser.add_argument("--task", required=True, choices=CLI_TASKS)
  parser.add_argument("--modality", choices=constants.MODALITIES,
                      help="modality stream (required for control/estimate; joint without it "
                      "generates RGB only)")
  parser.add_argument("--prompt", default="", help="caption (text condition)")
  parser.add_argument("--targets", default=None,
                      help="segmentation targets for the modality prompt, e.g. 'two persons'")
  parser.add_argument("--input", help="input video (.mp4/.gif/.npy): the modality condition "
                      "(control) or the RGB clip (estimate)")
  parser.add_argument("--ground-truth", help="optional video shown as the grid's last panel")
  parser.add_argument("--out", required=True, help="grid output (.mp4/.gif/.png/.npy)")
  parser.add_argument("--steps", type=int, default=50, help="ODE steps (default 50)")
  parser.add_argument("--guidance", type=float, default=None,
                      help="caption CFG scale (default 7.5; 1.0 for estimate)")
  parser.add_argument("--condition-guidance", type=float, default=1.0,
                      help="control only: guidance on the condition stream (1 = off)")
  parser.add_argument("--solver", default="euler", choices=samplers.SOLVERS)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--weights", default="ema", choices=("ema", "raw"))
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument("--scale", type=int, default=4, help="grid upscaling factor (default 4)")
  parser.add_argument("--fps", type=int, default=8)
  parser.add_argument("--save-streams", action="store_true",
                      help="also write the RGB and modality videos and the decoded values")
  return parser


def values_to_arrays(modality: str, values) -> dict[str, np.ndarray]:
  """Decoded modality values as named arrays for np.savez."""
  if modality == "densepose":
    part_index, uv = values
    return {"part_index": part_index, "uv": uv}
  return {modality: np.asarray(values)}


def _stream_path(out: str, name: str) -> str:
  stem, suffix = os.path.splitext(out)
  return f"{stem}.{name}{suffix}"


def run(args) -> list[str]:
  """Samples per `args` (parsed by build_parser); returns the written paths."""
  from unity_jax.sample import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from unity_jax.sample import video_io  # pylint: disable=g-import-not-at-top
  if args.task in ("control", "estimate"):
    if args.modality is None or args.input is None:
      raise ValueError(f"--task {args.task} needs --modality and --input")
  elif args.input is not None:
    raise ValueError("--task joint generates from text only; --input is for control/estimate")
  guidance = args.guidance if args.guidance is not None else (
      1.0 if args.task == "estimate" else 7.5)
  common = dict(num_steps=args.steps, guidance_scale=guidance, seed=args.seed,
                solver=args.solver, targets=args.targets)
  ground_truth = None if args.ground_truth is None else video_io.read_video(args.ground_truth)
  video = None if args.input is None else video_io.read_video(args.input)
  pipe = pipeline_lib.Pipeline.from_workdir(args.workdir, weights=args.weights, step=args.step)
  if video is not None:
    pipe.check_video(video, f"--input {args.input}")
  if ground_truth is not None:
    pipe.check_video(ground_truth, f"--ground-truth {args.ground_truth}")
  if args.task == "joint":
    out = pipe.generate(args.prompt, args.modality, **common)
  elif args.task == "control":
    out = pipe.control(video, args.modality, args.prompt,
                       condition_scale=args.condition_guidance, **common)
  else:
    out = pipe.estimate(video, args.modality, args.prompt, **common)
  written = [out.save(args.out, ground_truth, scale=args.scale, fps=args.fps)]
  if args.save_streams:
    written.append(video_io.write_video(_stream_path(args.out, "rgb"), out.rgb, fps=args.fps))
    if out.modality is not None:
      written.append(video_io.write_video(_stream_path(args.out, "modality"), out.modality,
                                          fps=args.fps))
    if out.values is not None:
      path = os.path.splitext(args.out)[0] + ".values.npz"
      with io_utils.atomic_path(path) as tmp:
        np.savez_compressed(tmp, **values_to_arrays(out.modality_name, out.values))
      written.append(path)
  print(f"unity-sample: {args.task}"
        f"{' ' + args.modality if args.modality else ''} from {args.workdir} (step {pipe.step}, "
        f"{pipe.weights} weights, {args.steps} {args.solver} steps, guidance {guidance}): "
        f"wrote {', '.join(written)}")
  return written


def main(argv=None) -> int:
  if argv is None:  # the console script, not a call from Python
    host_allocator.maybe_reexec()
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, NotImplementedError) as error:
    print(f"unity-sample: error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
