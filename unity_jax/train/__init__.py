"""Training: one trainer around a pure jitted `train_step(state, batch) -> (state, metrics)`.

  state.py       TrainState (params, opt_state, ema_params, step, stage, rng, non-finite counts)
  optim.py       AdamW with lr groups by leaf-path glob, per-stage warmup + cosine/constant
  step.py        the pure step: codec, per-sample noising, micro-batches, clip, AdamW, EMA
  curriculum.py  stages on the global step axis, stage transitions
  sources.py     batch sources: "random" (stateless synthetic) and "openuni" (grain pipeline)
  checkpoint.py  orbax checkpoints {state, meta, config, data iterator}; restore onto any mesh
  trainer.py     the loop: AOT compile, auto-resume, checkpoints, signals, non-finite policy
  monitor.py     metrics.jsonl, TensorBoard, progress line
  export.py      params fingerprints (summary.json) and safetensors export
  distributed.py jax.distributed start-up for multi-process jobs
  cli.py         `unity-train`
"""
