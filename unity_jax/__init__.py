"""unity_jax: train and sample UnityVideo-style multi-modal, multi-task video DiTs with JAX.

`from unity_jax import Pipeline` is the programmatic sampling entry point (imported lazily so
that `import unity_jax` stays cheap for data workers).
"""

__version__ = "0.1.0"


def __getattr__(name):
  if name == "Pipeline":
    from unity_jax.sample.pipeline import Pipeline  # pylint: disable=g-import-not-at-top
    return Pipeline
  raise AttributeError(f"module 'unity_jax' has no attribute {name!r}")
