"""Bounded subprocesses for tests: run a command, kill only that child on overrun."""

import subprocess
import sys


def run_module(args, *, timeout, env=None, cwd=None):
  """`python -m args...` in a subprocess; returns (returncode, stdout, stderr) as text.

  On a timeout the child (and only it) is killed and subprocess.TimeoutExpired propagates.
  """
  process = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.communicate()
    raise
  return process.returncode, stdout, stderr
