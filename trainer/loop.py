"""The training loop shared by pretraining (train.py) and finetuning (finetune.py).

config -> mesh -> data -> state (born sharded) -> jitted step -> checkpoints and metrics.

A `Task` says what differs between the two jobs: how to make the params, the loss, the input
stream and what to evaluate. Everything else lives here once: the mesh, the optimizer from the
config, the sharded train state, the train step compiled ahead of time (its compile time, memory
and FLOPs reported: core/cost.py), resume from WORKDIR/checkpoints (including the data
position: the stream restarts at the saved step), SIGTERM (save and stop), the NaN stop,
profiling, and the logs (and a Weights & Biases run: core/wandb_writer.py).

The per-step randomness is `fold_in(key(seed), step)`, drawn inside the step from the state's
step counter, and the data stream is a function of (seed, step), so an interrupted and resumed run
computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from core import cost as cost_lib
from core import logs, sharding, storage, wandb_writer
from core import task as task_lib
from core.errors import UserError
from data import info as data_info
from trainer import checkpoint, optim, preemption
from trainer import profiler as profiler_lib
from trainer import workdir as workdir_lib


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or Inf; the run stopped without saving the bad state."""


@dataclasses.dataclass
class Setup:
  """A run's pieces, for the loop and for tools (--compile_only, eval-only)."""

  mesh: Any
  state_shardings: Any
  batch_sharding: Any
  init_state: Callable[[], dict]
  train_step: Callable  # jitted: (state, batch) -> (state, metrics), donates state
  abstract_state: Any  # ShapeDtypeStructs with their shardings
  abstract_batch: dict
  total_steps: int

  def compile_train_step(self, compiler_options: dict | None = None) -> cost_lib.StepCost:
    """The train step compiled ahead of time for the run's devices, with what it costs."""
    batch_size = jax.tree.leaves(self.abstract_batch)[0].shape[0]
    return cost_lib.compile_step(
      self.train_step,
      self.abstract_state,
      self.abstract_batch,
      global_batch=batch_size,
      state=self.abstract_state,
      compiler_options=compiler_options,
    )


def setup(config, task: task_lib.Task, *, devices=None) -> Setup:
  """The mesh, optimizer, sharded state initializer and jitted train step of a config.

  With config.grad_accum_steps = k > 1 the step splits the global batch into k micro-batches,
  runs them one after another (lax.scan: the activations of one micro-batch at a time) and
  applies the mean of their gradients once: the update of the whole batch, k times less memory
  for activations. Every micro-batch is spread over all devices."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % (mesh.size * accum):
    raise sharding.MeshError(
      f"batch_size {config.batch_size} is not divisible by the {mesh.size} "
      f"devices of the mesh {dict(mesh.shape)} times grad_accum_steps "
      f"{accum}."
    )
  abstract_params = jax.eval_shape(task.fresh_params)
  tx, schedule = optim.make_optimizer(config, abstract_params, task.steps_per_epoch)
  ema_decay = config.optim.ema_decay

  def init_state():
    params = task.fresh_params()
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    if ema_decay:
      state["ema_params"] = params
    return state

  abstract_state = jax.eval_shape(init_state)
  state_shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding.min_size)
  batch_sharding = sharding.batch_sharding(mesh)

  def loss_and_grads(params, batch, rng, index):
    value_and_grad = jax.value_and_grad(task.loss_fn, has_aux=True)
    return value_and_grad(params, batch, jax.random.fold_in(rng, index))

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.key(config.seed), state["step"])
    batch = {**batch, "key": jax.random.split(rng, config.batch_size)}
    if accum == 1:
      (loss, aux), grads = loss_and_grads(state["params"], batch, rng, 0)
    else:
      micro = sharding.micro_batches(batch, accum, mesh)

      def add(total, xs):
        index, micro_batch = xs
        one = loss_and_grads(state["params"], micro_batch, rng, index)
        return jax.tree.map(jnp.add, total, one), None

      zeros = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(
          loss_and_grads, state["params"], jax.tree.map(lambda x: x[0], micro), rng, 0
        ),
      )
      total, _ = jax.lax.scan(add, zeros, (jnp.arange(accum), micro))
      (loss, aux), grads = jax.tree.map(lambda x: x / accum, total)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if ema_decay:
      new_state["ema_params"] = optim.ema_update(state["ema_params"], params, ema_decay)
    step_metrics = {
      "loss": loss,
      "lr": schedule(state["step"]),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      **aux,
    }
    return new_state, step_metrics

  return Setup(
    mesh=mesh,
    state_shardings=state_shardings,
    batch_sharding=batch_sharding,
    init_state=jax.jit(init_state, out_shardings=state_shardings),
    train_step=jax.jit(
      train_step,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
    ),
    abstract_state=jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state,
      state_shardings,
    ),
    abstract_batch=data_info.abstract_batch(config, batch_sharding),
    total_steps=optim.total_steps(config, task.steps_per_epoch),
  )


def restore_or_init(run: Setup, task: task_lib.Task, ckpt: checkpoint.Checkpointer) -> dict:
  """Resumes from the newest checkpoint of the workdir that can be restored (an unreadable one
  is moved aside: checkpoint.Checkpointer.restore_latest), else starts fresh (maybe from
  task.load_pretrained)."""
  state = ckpt.restore_latest(run.abstract_state, say=logs.say)
  if state is not None:
    logs.say(f"Resumed from {ckpt.directory} at step {int(state['step'])}.")
    return state
  state = run.init_state()
  if task.load_pretrained is not None:
    params = task.load_pretrained(state["params"])
    state["params"] = jax.device_put(params, run.state_shardings["params"])
  if "ema_params" in state:  # its own buffers: the step donates params and EMA separately
    state["ema_params"] = jax.tree.map(jnp.copy, state["params"])
  return state


def train_and_evaluate(
  config, workdir: str, task: task_lib.Task, *, devices=None, allow_config_change: bool = False
) -> dict:
  """Runs (or resumes) the job in `workdir` to config's total steps; returns the final state.

  devices: the devices of the mesh (default: all). allow_config_change: resume with a config
  that changes what is computed (trainer/workdir.py), keeping the config's history. A start that
  fails before its first step leaves no workdir behind if it made it. `workdir` may be local or
  gs://BUCKET/PATH."""
  made_workdir = not storage.exists(workdir)
  run = setup(config, task, devices=devices)
  ckpt = writer = watch = batches = profiler = None
  started = failed_start = False
  try:
    ckpt = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
    )
    changed = False
    if ckpt.latest_step() is not None:  # before anything is restored: a new shape never gets there
      changed = workdir_lib.check(workdir, config, allow_change=allow_config_change, say=logs.say)
    if jax.process_count() > 1:  # each process read config.json before process 0 rewrites it
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("config.json checked")
    state = restore_or_init(run, task, ckpt)
    step = int(state["step"])
    if jax.process_index() == 0:
      workdir_lib.save(workdir, config, step, changed=changed)
      dropped = workdir_lib.discard_metrics_after(workdir, step)
      if dropped:
        logs.say(
          f"Moved {dropped} metrics row(s) of the steps after {step} (to be done again) to "
          "metrics.discarded.jsonl."
        )
    finished = step >= run.total_steps
    writer = logs.MetricWriter(
      workdir,
      run.total_steps,
      shown=logs.SHOWN + task.shown,
      wandb=None if finished else _wandb_run(config, workdir),
    )
    if finished:
      logs.say(
        f"The run in {workdir} is finished: step {step} of {run.total_steps}. To train "
        "longer, raise --config.total_steps (or --config.num_epochs) and run again; it "
        f"goes on from step {step}."
      )
      return state
    step_cost = run.compile_train_step()
    logs.say(describe_cost(step_cost))
    writer.write(step, step_cost.report(), progress=False, summary=True)
    train_step = step_cost.executable
    eval_every = config.eval_every_steps
    if task.evaluate is not None and task.evaluate_at_start and eval_every and step == 0:
      writer.write(step, task.evaluate(state, step), progress=True)
    batches = task.train_batches(step)
    watch = preemption.PreemptionWatch()
    profiler = profiler_lib.Profiler(config.profile_steps, workdir)
    log_every, ckpt_every = config.log_every_steps, config.checkpoint_every_steps
    images_seen, window_start = 0, time.time()
    writer.start(step)

    while step < run.total_steps:
      profiler.before(step)
      batch = sharding.make_global_batch(next(batches), run.batch_sharding)
      state, step_metrics = train_step(state, batch)
      step += 1
      started = True
      images_seen += config.batch_size
      profiler.after(step, step_metrics)
      last = step == run.total_steps
      stop = watch.should_stop(step)
      if step % log_every == 0 or last or stop:
        host = jax.device_get(step_metrics)
        _check_finite(host["loss"], step, ckpt)
        rate = images_seen / max(time.time() - window_start, 1e-9)
        host.update(
          images_per_sec=rate,
          epoch=step / task.steps_per_epoch,
          tflops_per_device=step_cost.tflops_per_device(rate),
        )
        if step_cost.mfu(rate) is not None:
          host["mfu"] = step_cost.mfu(rate)
        if task.skipped_images is not None:
          host["skipped_images"] = task.skipped_images()
        writer.write(step, host)
        images_seen, window_start = 0, time.time()
      if step % ckpt_every == 0 or last or stop:
        _check_finite(jax.device_get(step_metrics["loss"]), step, ckpt)
        ckpt.save(step, state)
      if task.evaluate is not None and eval_every and (step % eval_every == 0 or last):
        writer.write(step, task.evaluate(state, step), progress=True)
      if stop:
        ckpt.wait()
        logs.say(
          f"Stopped at step {step}: {watch.reason}; the checkpoint is saved. Run the "
          "same command again to resume."
        )
        break
    ckpt.wait()
    return state
  except BaseException:
    failed_start = made_workdir and not started
    raise
  finally:
    for part in (profiler, batches, watch, ckpt, writer):  # batches: stops the prefetch threads
      if hasattr(part, "close"):
        part.close()
    if failed_start and jax.process_index() == 0:
      storage.rmtree(workdir)  # made by this start, which failed


def evaluate_only(config, workdir: str, task: task_lib.Task, *, devices=None) -> dict:
  """Evaluates the latest checkpoint of `workdir`, or else the task's initial params (e.g. a
  pretrained model), writes one row to metrics.jsonl and returns it."""
  if task.evaluate is None:
    raise ValueError("This task has no evaluation.")
  made_workdir = not storage.exists(workdir)
  run = setup(config, task, devices=devices)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
  writer = None
  failed = False
  try:
    state = restore_or_init(run, task, ckpt)
    step = int(state["step"])
    result = task.evaluate(state, step)
    writer = logs.MetricWriter(workdir, run.total_steps, shown=logs.SHOWN + task.shown)
    writer.write(step, result)
    return result
  except BaseException:
    failed = made_workdir
    raise
  finally:
    for part in (ckpt, writer):
      if part is not None:
        part.close()
    if failed and jax.process_index() == 0:
      storage.rmtree(workdir)  # made by this evaluation, which failed


def _wandb_run(config, workdir: str) -> wandb_writer.Run | None:
  """The W&B run of config.log.wandb (process 0; none without a project)."""
  log = config.log
  return wandb_writer.open_run(
    workdir,
    log.wandb,
    entity=log.wandb_entity,
    name=log.wandb_name,
    config=config.to_dict(),
  )


def _check_finite(loss, step: int, ckpt: checkpoint.Checkpointer) -> None:
  loss = float(loss)
  if not math.isfinite(loss):
    ckpt.wait()
    last = ckpt.latest_step()
    raise NonFiniteLossError(
      f"The loss is {loss} at step {step}; stopping without saving. The last good checkpoint "
      f"is step {last} in {ckpt.directory}."
      if last is not None
      else f"The loss is {loss} at step {step}, before any checkpoint was saved. Lower the learning "
      "rate or check the input data."
    )


def describe_cost(step_cost: cost_lib.StepCost) -> str:
  """One line on the compiled train step: compile time, FLOPs, memory per device."""
  r = step_cost.report()
  hbm = f" of {r['hbm_gib_per_device']:.1f}" if r["hbm_gib_per_device"] else ""
  return (
    f"Train step compiled in {r['compile_seconds']:.1f} s: {r['gflop_per_example']:.2f} "
    f"GFLOP per example; per device {r['state_gib_per_device']:.2f} GiB of state, "
    f"{r['temp_gib_per_device']:.2f} GiB of temporaries, {r['total_gib_per_device']:.2f}"
    f"{hbm} GiB in all."
  )
