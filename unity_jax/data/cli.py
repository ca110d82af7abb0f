"""`unity-data`: make and look at OpenUni data (also `python -m unity_jax.data.cli`).

  unity-data synth   --out DIR [--clips N] [--seed S] [--split train|eval] [--config CFG]
                     [--frames T] [--size H W | --height H --width W] [--workers W] [--with-gt]
  unity-data convert --manifest FILE --out DIR [--config CFG] [--frames T] [--size H W]
                     [--skip-bad] [--source S] [--split train|eval] [--workers W]

--config configs/NAME.py[:ARGS] takes frames, height and width from that config's config.data
(explicit --frames/--size must agree with it), so inspect and training with it read the data.
  unity-data inspect --data DIR --config CFG [--batches K] [--json]
  unity-data export-tfds --data DIR --out TFDS_DIR [--config clips|clips_with_gt]
  unity-data precompute --data DIR --config CFG [--out DIR|URL] [--split S] [--skip-bad]
                     [--config.KEY=VALUE ...]   (codec latents + text embeddings, tensorstore)

Exit status: 0 on success, 2 on bad arguments or bad input data (the message says what).
"""

import argparse
import importlib
import json
import sys
from typing import Sequence

from unity_jax.data import synth_cli


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="unity-data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  synth = commands.add_parser("synth", help="write synthetic clips as OpenUni shards")
  synth_cli.add_arguments(synth)
  from unity_jax.data import convert  # pylint: disable=g-import-not-at-top
  convert.add_arguments(commands.add_parser(
      "convert", help="convert real videos + modality videos + captions to OpenUni shards"))
  commands.add_parser("inspect", help="per-batch source/modality/task counts (see --help)",
                      add_help=False)
  commands.add_parser("precompute", help="codec latents and text embeddings into tensorstore "
                      "zarr arrays (see --help)", add_help=False)
  export = commands.add_parser("export-tfds", help="build the tensorflow-datasets builder "
                               "open_uni/<config> from an OpenUni directory")
  export.add_argument("--data", required=True, help="OpenUni data directory")
  export.add_argument("--out", required=True, help="tfds data_dir to write")
  export.add_argument("--config", choices=("clips", "clips_with_gt"), default="clips")
  return parser


def _inspect(argv: Sequence[str]) -> int:
  try:
    inspect = importlib.import_module("unity_jax.data.inspect")
  except ImportError as error:
    print(f"unity-data inspect is not available in this installation "
          f"(unity_jax.data.inspect: {error})", file=sys.stderr)
    return 2
  return int(inspect.main(list(argv)) or 0)


def _export_tfds(args: argparse.Namespace) -> int:
  from unity_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  builder = tfds_builder.build_tfds(args.data, args.out, args.config)
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(json.dumps({"tfds_name": f"{tfds_builder.TFDS_NAME}/{args.config}",
                    "data_dir": args.out, "splits": splits}))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the `unity-data` console script; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "inspect":  # Its own parser owns every flag after the subcommand.
    return _inspect(argv[1:])
  if argv and argv[0] == "precompute":  # Its own parser (+ --config.KEY=VALUE overrides).
    from unity_jax.data import precompute  # pylint: disable=g-import-not-at-top
    return precompute.main(argv[1:])
  args = _parser().parse_args(argv)
  from unity_jax.data import convert  # pylint: disable=g-import-not-at-top
  from unity_jax.data.schema import RecordError  # pylint: disable=g-import-not-at-top
  try:
    if args.command == "synth":
      return synth_cli.main(args)
    if args.command == "convert":
      return convert.main(args)
    return _export_tfds(args)
  except (convert.ConvertError, RecordError, ValueError, RuntimeError) as error:
    print(f"unity-data {args.command}: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
