"""XLA compiler options for the jitted programs (train step, samplers), chosen per platform.

On CPU, XLA 0.10 hands two kinds of work to the YNNPACK library by default
(`xla_cpu_experimental_ynn_fusion_type` = {INDIVIDUAL_DOT, REDUCE}): every standalone dot, and
reductions with what fuses into them. Our train steps run faster with the dots in Eigen
(measured, not derived; most of their dot FLOPs are attention tiles with head dim 64). On a 2-core
AVX2 EPYC, both compiles of the same `small` step alternated in one process: 10.17 -> 9.73 s
median over 8 steps each (CPU 19.84 -> 19.01 s), 10.21 -> 8.95 s over 6 in another run; tiny
unchanged (0.89 s). Taking reductions out of YNNPACK too made small 2x slower; adding
element-wise ops or dot fusions to it was slower. The options are passed per compile
(`jax.jit(..., compiler_options=...)`), so they never reach other backends.

Set UNITY_JAX_CPU_DOTS=ynnpack to keep XLA's default; an
`--xla_cpu_experimental_ynn_fusion_type` you put in XLA_FLAGS yourself is left to apply.
"""

import os
from typing import Mapping

YNN_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_FUSION_TYPES: "LIBRARY_FUSION_TYPE_REDUCE"}
"""Dots to Eigen, reductions stay with YNNPACK (XLA's default minus INDIVIDUAL_DOT; a dot that
feeds a reduction may still be fused into it: 6 of small's 452 dots, against 361 by default)."""
OPT_OUT = "UNITY_JAX_CPU_DOTS"


def compiler_options(platform: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)` on devices of `platform` ("cpu", "tpu").

  Empty off CPU, when UNITY_JAX_CPU_DOTS=ynnpack, or when XLA_FLAGS already sets the fusion
  types (options given per compile would override the flag).
  """
  if platform != "cpu" or YNN_FUSION_TYPES in environ.get("XLA_FLAGS", ""):
    return {}
  choice = environ.get(OPT_OUT, "eigen").strip().lower()
  if choice == "ynnpack":
    return {}
  if choice != "eigen":
    raise ValueError(f"{OPT_OUT}={environ[OPT_OUT]!r}: expected 'eigen' (default) or 'ynnpack'")
  return dict(CPU_OPTIONS)


def for_mesh(mesh) -> dict[str, str]:
  """compiler_options for the platform of `mesh`'s devices."""
  return compiler_options(mesh.devices.flat[0].platform)
