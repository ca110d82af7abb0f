"""The pure training step: `train_step(state, batch) -> (state, metrics)`.

One step = encode the pipeline batch with the codec (precomputed latents pass through), route
tasks and noise every sample with its own key `fold_in(fold_in(rng, step), global_sample_index)`,
forward + backward (over `train.accumulate_steps` micro-batches with lax.scan), clip, AdamW with
per-group learning rates, EMA. Per-sample keys make the result independent of how the batch is split into
micro-batches, devices or processes. A step whose loss or gradient norm is not finite changes
nothing but the step and the non-finite counters (params, optimizer state and EMA are kept).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax import xla_options
from unity_jax.flow import batch as batch_lib
from unity_jax.flow import objective as objective_lib
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.parallel import rules as rules_lib
from unity_jax.train import optim
from unity_jax.train.state import TrainState

NAN_INJECTION_KEY = "debug_nan"
"""Optional float32 [B] batch entry added to the RGB latents (train.debug_nan_steps tests)."""


def _per_sample_noisy_inputs(keys, latent_batch, objective, empty_caption=None):
  """objective.make_noisy_inputs with one key per sample (vmapped over the batch axis)."""
  def one(key, sample):
    inputs, targets, weights = objective_lib.make_noisy_inputs(
        key, jax.tree.map(lambda x: x[None], sample), objective, empty_caption)
    return jax.tree.map(lambda x: x[0], (inputs, targets, weights))
  return jax.vmap(one)(keys, latent_batch)


def make_loss_fn(config, model, empty_caption=None):
  """loss(params, latent_batch, sample_keys) -> (loss, metric sums); differentiable."""
  def loss_fn(params, latent_batch, sample_keys):
    inputs, targets, weights = _per_sample_noisy_inputs(sample_keys, latent_batch,
                                                        config.objective, empty_caption)
    rgb_velocity, modality_velocity = model.apply({"params": params}, **inputs)
    predictions = {"rgb": rgb_velocity, "modality": modality_velocity}
    return objective_lib.flow_loss(predictions, targets, weights, latent_batch)
  return loss_fn


def split_micro_batches(tree, num_micro: int):
  """[B, ...] -> [k, B/k, ...] with micro-batch j = samples j, j+k, j+2k, ...

  The strided split keeps every micro-batch spread over all data-parallel devices (each
  device's contiguous share of B holds B/(k·dp) samples of each micro-batch), so no data moves.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    spec = P(None, ("data", "fsdp"), *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, spec)
  return jax.tree.map(split, tree)


def _gradients(loss_fn, params, latent_batch, sample_keys, num_micro: int):
  """(mean loss, metric sums, mean gradients) over `num_micro` micro-batches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_micro == 1:
    (loss, sums), grads = grad_fn(params, latent_batch, sample_keys)
    return loss, sums, grads
  micro = split_micro_batches((latent_batch, sample_keys), num_micro)

  def accumulate(carry, micro_batch):
    (loss, sums), grads = grad_fn(params, *micro_batch)
    return jax.tree.map(jnp.add, carry, (loss, sums, grads)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: (lambda out: (out[0][0], out[0][1], out[1]))(grad_fn(params, *first))))
  (loss, sums, grads), _ = jax.lax.scan(accumulate, zeros, micro)
  return loss / num_micro, sums, jax.tree.map(lambda g: g / num_micro, grads)


def make_train_step(config, model, optimizer, multipliers, empty_caption=None):
  """Builds the pure step for `config` (call it under jax.set_mesh; jit with `jit_train_step`).

  Args:
    model: build_model(config).
    optimizer: optim.make_optimizer(config, params); multipliers: optim.lr_multipliers(...).
    empty_caption: with precomputed caption embeddings, the stored empty caption
      {"embedding": [Lc, D], "mask": [Lc]} (latent_examples.empty_caption) that caption dropout
      substitutes; read once per run and a constant of the program (Lc x D, small next to the
      batch), so the step signature stays (state, batch, codec).
  Returns:
    train_step(state: TrainState, batch: pipeline batch dict, codec: make_codec(config)) ->
    (state, metrics dict of float32 scalars: loss, loss/task/*, loss/modality/*, grad_norm,
    lr, update_param_ratio, param_norm, nonfinite, nonfinite_total, nonfinite_consecutive).
    The codec is an argument, not a closure: a Wan VAE's weights are then inputs of the
    compiled program instead of constants baked into it.
  """
  t = config.train
  rules = rules_lib.rules_for(config.mesh.rules)
  loss_fn = make_loss_fn(config, model, empty_caption)

  def train_step(state: TrainState, batch: dict, codec):
    with nn.logical_axis_rules(rules):
      batch = dict(batch)
      poison = batch.pop(NAN_INJECTION_KEY, None)
      latent_batch = batch_lib.to_latent_batch(batch, codec)
      if poison is not None:
        latent_batch["rgb"] = latent_batch["rgb"] + poison.reshape(-1, 1, 1, 1, 1)
      step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
      batch_size = latent_batch["task_id"].shape[0]
      sample_keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, jnp.arange(batch_size))
      loss, sums, grads = _gradients(loss_fn, state.params, latent_batch, sample_keys,
                                     t.accumulate_steps)

      grad_norm = optax.global_norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      lr = optim.learning_rate(config, state.step, state.stage)
      updates = optim.scale_updates(updates, lr, multipliers)
      params = optax.apply_updates(state.params, updates)
      ema_due = (state.step + 1) % t.ema_every == 0
      decay = jnp.where(ema_due, jnp.float32(t.ema_decay), jnp.float32(1.0))
      ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params,
                                params)

      keep_if_finite = lambda new, old: jax.tree.map(
          lambda n, o: jnp.where(finite, n, o), new, old)
      nonfinite = (~finite).astype(jnp.int32)
      new_state = state.replace(
          step=state.step + 1,
          params=keep_if_finite(params, state.params),
          opt_state=keep_if_finite(opt_state, state.opt_state),
          ema_params=keep_if_finite(ema_params, state.ema_params),
          nonfinite_total=state.nonfinite_total + nonfinite,
          nonfinite_consecutive=(state.nonfinite_consecutive + 1) * nonfinite)

      param_norm = optax.global_norm(state.params)
      metrics = objective_lib.summarize(sums)
      metrics.update(
          grad_norm=grad_norm, lr=lr, param_norm=param_norm,
          update_param_ratio=optax.global_norm(updates) / jnp.maximum(param_norm, 1e-12),
          nonfinite=nonfinite, nonfinite_total=new_state.nonfinite_total,
          nonfinite_consecutive=new_state.nonfinite_consecutive)
      return new_state, metrics

  return train_step


def jit_train_step(train_step, state_shardings: TrainState, mesh):
  """jax.jit with explicit shardings: state donated and kept in place, batch over data×fsdp,
  codec weights replicated; compiled with the mesh platform's xla_options."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step,
                 in_shardings=(state_shardings, mesh_lib.batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0,
                 compiler_options=xla_options.for_mesh(mesh))


def abstract_batch(batch_shapes: dict, mesh) -> dict:
  """ShapeDtypeStructs of a global batch ({name: (shape, dtype)}) with the batch sharding."""
  sharding = mesh_lib.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for k, (shape, dtype) in batch_shapes.items()}


def compile_train_step(jitted, abstract_state: TrainState, batch_abstract: dict, codec, mesh):
  """AOT-compiles the step; returns (compiled, report) with per-device memory and FLOPs.

  The compiled step is called as compiled(state, batch, codec)."""
  with jax.set_mesh(mesh):
    compiled = jitted.lower(abstract_state, batch_abstract, codec).compile()
  memory = compiled.memory_analysis()
  report = {}
  if memory is not None:
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                 "alias_size_in_bytes", "generated_code_size_in_bytes"):
      report[name] = int(getattr(memory, name, 0))
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  report["flops"] = float((cost or {}).get("flops", float("nan")))
  return compiled, report
