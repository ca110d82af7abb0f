"""unity_jax: UnityVideo-style unified multi-modal, multi-task video diffusion in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array_record>=0.8,<0.9",
    # zarr v3 store of precomputed latents/embeddings (unity_jax/data/precompute.py).
    "tensorstore>=0.1.70",
    "ml-collections>=1.1,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "absl-py>=2",
    "numpy>=2,<3",
    "scipy>=1.13,<2",  # linear_sum_assignment (segmentation metrics); jax needs it too
    "imageio>=2.37,<3",
    "imageio-ffmpeg>=0.6,<0.9",
    "pillow>=10",
    "safetensors>=0.5,<1",
    "tensorboardX>=2.6,<3",
]

setup(
    name="unity_jax",
    version="0.1.0",
    description="Train and sample UnityVideo-style multi-modal, multi-task video DiTs with JAX.",
    packages=find_packages(include=["unity_jax", "unity_jax.*"]),
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "cuda": ["jax[cuda12]>=0.10,<0.11"],
        # chex: test helpers only; pycocotools: the mask mAP parity test (not skipped in CI).
        "test": ["pytest>=8", "pytest-timeout>=2", "chex>=0.1.92,<0.2", "pycocotools>=2.0.8,<3"],
        # Parity tests against PyTorch reference code run with random weights (never downloads);
        # benchmarks/peer.py times diffusers' Wan transformer under torch beside our step.
        # accelerate: WanTransformer3DModel.from_pretrained needs it (keep-in-fp32 modules).
        # transformers + sentencepiece: the umT5 encoder and tokenizer parity tests.
        "parity": ["torch==2.13.0", "diffusers>=0.35", "accelerate>=1.0", "transformers>=5,<6",
                   "sentencepiece>=0.2,<0.3"],
        # umt5.Tokenizer (prompts -> ids for the umT5 encoder). Not core: only the step that
        # encodes prompts (sampling, precomputing embeddings) tokenizes; training reads embeddings.
        "text": ["sentencepiece>=0.2,<0.3"],
    },
    entry_points={
        "console_scripts": [
            "unity-data=unity_jax.data.cli:main",
            "unity-train=unity_jax.train.cli:main",
            "unity-sample=unity_jax.sample.cli:main",
            "unity-eval=unity_jax.eval.cli:main",
        ],
    },
)
