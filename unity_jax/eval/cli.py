"""`unity-eval` (DESIGN.md §6). Not implemented yet: it lands with the sampling/evaluation issue."""

import sys


def main(argv=None):
  del argv
  print("unity-eval: not implemented yet (see the open sampling/evaluation issue)", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
