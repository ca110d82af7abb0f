"""benchmarks/peer.py: without the parity extra it says what to install instead of failing."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_peer_benchmark_names_the_parity_extra_when_torch_is_missing():
  # torch made unimportable (as without the extra); the check runs before anything is built.
  code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['peer.py', '--quick']; "
          f"runpy.run_path({str(ROOT / 'benchmarks' / 'peer.py')!r}, run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 1, result.stderr
  assert 'pip install -e ".[parity]"' in result.stderr
  assert "unity_jax" not in result.stdout   # exited before timing anything
