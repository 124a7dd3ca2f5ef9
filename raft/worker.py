"""The per-worker training loop: what every Ray Train worker runs.

Reads like a recipe: build the model, apply the technique, hand it to DeepSpeed, restore
a checkpoint if Ray Train gives one, then train, evaluate and report each epoch. Each step
is a short function below.
"""

from __future__ import annotations

import json
import os
import queue
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from raft import batching, checkpoints, perf, registry
from raft.deepspeed_config import (
    accumulation_step,
    build_deepspeed_config,
    micro_batches_per_epoch,
    parameter_groups,
    reschedule,
    resolve_precision,
    resumed_total_steps,
    size_buckets,
    total_steps,
    uses_client_optimizer,
    warmup_steps,
)
from raft.labels import LabelMap
from raft.tasks.base import loss_weight

STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a restart resumes exactly."""

    epoch: int = 0  # epochs fully finished
    global_step: int = 0  # optimizer steps taken
    batches_into_epoch: int = 0  # micro batches of the current epoch already trained, per worker
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int | None = None  # workers when saved (an elastic run may resume with another)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Entry point handed to ``TorchTrainer``; ``config`` comes from ``raft.train``."""
    from raft.spec import RunSpec

    timeline = {"workers_started": time.time()}  # rank 0's stages, for summary.json
    spec = RunSpec.model_validate(config["spec"])
    if not spec.scaling.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skip DeepSpeed's GPU probing
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    _set_process_env(context)
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    _seed_everything(spec.train.seed)

    task = registry.get_task(spec.task.type)
    labels = LabelMap(tuple(config["labels"])) if config["labels"] else None
    samples = config.get("samples") or []  # a few validation rows, for logged generations
    skipped = skipped_row_metrics(config.get("skipped") or {})
    # From the workers actually running: an elastic run may have fewer than it asked for.
    steps = total_steps(config["train_rows"] // world_size, spec)
    micro_batches = micro_batches_per_epoch(config["train_rows"] // world_size, spec.train.batch_size)
    precision = resolve_precision(spec.train.precision, spec.scaling.use_gpu, _bf16_supported())
    ds_config = build_deepspeed_config(spec, precision, world_size)

    # Both shards' first passes begin now, in the background: Ray Data's start-up then
    # overlaps the model load instead of delaying the first evaluation and step.
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    first_validation = (
        _Prefetched(_shard_pass(validation_shard, task, spec))
        if spec.train.eval_before_training
        else None  # then it begins after the first step (below)
    )
    # Training passes are numbered from 0 in each worker process, as Ray Data numbers its
    # executions of the (reshuffled) training set: the epoch, for a run that never restarted.
    passes = 0
    first_train = _Prefetched(_shard_pass(train_shard, task, spec, True, passes, rank))

    _init_deepspeed_comm()
    model = _build_model(spec, task, labels, ds_config)
    timeline["model_loaded"] = time.time()
    trainable, total = _count_parameters(model)
    log = _Logger(rank, config.get("progress"))
    worker_nodes = _worker_nodes()
    log(f"workers on {len(set(worker_nodes))} node(s): " + ", ".join(n[:8] for n in worker_nodes))
    log(
        f"model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%) "
        f"· {spec.technique.type} · ZeRO {spec.deepspeed.zero_stage} · {precision} · {world_size} workers"
    )
    ds_config = size_buckets(ds_config, trainable, spec.deepspeed.config)
    engine = _deepspeed_engine(model, spec, task, ds_config, steps)
    device = engine.device
    timeline["engine_ready"] = time.time()

    restored = _restore(engine, spec, log, config.get("start_from"))
    resumed_from = (
        {"epoch": restored.epoch, "global_step": restored.global_step, "checkpoint": restored.source}
        if restored
        else None
    )
    state = restored.state if restored else TrainState()
    if restored:  # at the rate of the workers running now, from where the run is
        resumed = resumed_total_steps(
            state.global_step, state.epoch, state.batches_into_epoch, config["train_rows"] // world_size, spec
        )
        if resumed != steps and isinstance(engine.lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            steps = resumed
            reschedule(engine.lr_scheduler, spec, steps)
            _apply_learning_rate(engine, spec.train.lr)
            log(f"learning-rate schedule: {steps} steps in all with {world_size} workers")
    log.event(
        event="start",
        total_steps=steps,
        epochs=spec.train.epochs,
        world_size=world_size,
        global_step=state.global_step,
        trainable=trainable,
        total=total,
    )

    if not state.history and spec.train.eval_before_training:
        initial = _evaluate(engine, validation_shard, task, spec, labels, device, samples, first_validation)
        first_validation = None
        initial.update(epoch=0, global_step=0)
        state.history.append(initial)
        log(f"before training: {_format(initial)}", show=False)
        log.event(event="epoch", **_scalars(initial))
    timeline["evaluated"] = time.time()

    loop_start, samples_seen, probe = time.perf_counter(), 0, _FirstStep(timeline, engine)
    while state.epoch < spec.train.epochs and not _done(state, spec):
        if first_validation is None:  # this epoch's evaluation pass starts while it trains,
            # from the run's first step on: begun beside the model load or the first step,
            # its start-up (a split coordinator, read and tokenize tasks) slowed them.
            first_validation = _Prefetched(_shard_pass(validation_shard, task, spec), start=False)
            probe.then(first_validation.start)
        epoch_stats = _train_one_epoch(
            engine, train_shard, task, spec, state, steps, micro_batches, device, log, probe, first_train
        )
        first_train = None
        samples_seen += epoch_stats["samples"]
        state.epoch += 1
        state.batches_into_epoch = 0
        if state.epoch < spec.train.epochs and not _done(state, spec):
            # The next epoch's pass begins now, in the background: Ray Data's start-up for
            # it (the split coordinator's epoch barrier, the first blocks read and
            # tokenized) overlaps this evaluation and checkpoint, not the next first steps.
            passes += 1
            first_train = _Prefetched(_shard_pass(train_shard, task, spec, True, passes, rank))
        metrics = _evaluate(engine, validation_shard, task, spec, labels, device, samples, first_validation)
        first_validation = None
        metrics.update(
            epoch=state.epoch,
            global_step=state.global_step,
            train_loss=epoch_stats["loss"],
            samples_per_second=epoch_stats["samples_per_second"],
            tokens_per_second=epoch_stats["tokens_per_second"],
            padded_tokens_per_second=epoch_stats["padded_tokens_per_second"],
            data_wait_fraction=epoch_stats["data_wait_fraction"],
            **skipped,
        )
        state.history.append(metrics)
        log(f"epoch {state.epoch}/{spec.train.epochs}: {_format(metrics)}", show=False)
        log.event(event="epoch", **_scalars(metrics))
        for sample in metrics.get("generations", []):
            log(_format_generation(sample))
        _report(engine, spec, state, metrics)

    elapsed = time.perf_counter() - loop_start
    for unread in (first_train, first_validation):  # a resumed run with nothing left to do
        if unread is not None:
            unread.close()
    if probe.memory is None and "first_step" in timeline:  # one step only: after it
        probe.measure()
    memory = _gather_memory(probe.memory, spec.scaling.use_gpu)  # a collective: every rank
    return (
        {
            "history": state.history,
            "parameters": {"trainable": trainable, "total": total},
            "train_seconds": elapsed,
            "samples_per_second_per_worker": samples_seen / elapsed if elapsed > 0 else 0.0,
            "precision": precision,
            "resumed_from": resumed_from,
            "worker_nodes": worker_nodes,
            "timeline": timeline,
            "memory": memory,
        }
        if rank == 0
        else None
    )


# -- set-up ---------------------------------------------------------------------------
def _set_process_env(context: Any) -> None:
    # DeepSpeed reads these; Ray Train has already set up torch.distributed.
    os.environ["RANK"] = str(context.get_world_rank())
    os.environ["WORLD_SIZE"] = str(context.get_world_size())
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())
    os.environ["LOCAL_WORLD_SIZE"] = str(context.get_local_world_size())


def _init_deepspeed_comm() -> None:
    """Hand Ray Train's process group to DeepSpeed's comm layer (before any ZeRO-3 init,
    which needs the world size).

    DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce op when it starts
    (65 s on 2 cores; again for every new Python environment, as the build is keyed by
    its paths). Only its inference all-reduce uses the op, never training, so raft tells
    the backend there is none and the op is neither built nor loaded."""
    import importlib

    deepspeed = _import_deepspeed()

    # By module path: the attribute deepspeed.comm.torch is the torch library itself.
    torch_backend = importlib.import_module("deepspeed.comm.torch")
    if hasattr(torch_backend, "build_shm_op"):
        torch_backend.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else None)


def _import_deepspeed() -> Any:
    """``import deepspeed``, less MLflow: DeepSpeed's autotuner imports MLflow whenever it is
    installed (raft's tracking installs it), which took 0.6 of the 0.7 s DeepSpeed's import
    adds to a worker's start here. raft never runs the autotuner, and this process never
    tracks (raft.monitor's board does, in its own process), so MLflow is hidden for the
    import alone and importable again after it."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
    try:
        import deepspeed
    finally:
        if hide and "mlflow" in sys.modules and sys.modules["mlflow"] is None:
            del sys.modules["mlflow"]
    return deepspeed


def _worker_nodes() -> list[str]:
    """The Ray node id of every rank, in rank order (recorded in the run's summary)."""
    import ray

    mine = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [mine]
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [str(node) for node in gathered]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _build_model(spec: Any, task: Any, labels: LabelMap | None, ds_config: dict) -> torch.nn.Module:
    hf_ds_config = None
    if spec.deepspeed.zero_stage == 3:
        # Alive during from_pretrained: transformers then loads the weights straight into
        # ZeRO-3 partitions, so no worker ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841
    model = task.load_pretrained(spec, labels)
    _upcast_for_fp32(model, ds_config)
    model = registry.apply_technique(model, spec.technique, task)
    model._raft_hf_ds_config = hf_ds_config  # keep the weak global reference alive
    return model


def _upcast_for_fp32(model: torch.nn.Module, ds_config: dict) -> None:
    """``from_pretrained`` keeps a checkpoint's own dtype, and most LLMs ship in bf16 or
    fp16. DeepSpeed casts the module for bf16/fp16 training (keeping fp32 master weights),
    but an fp32 run would otherwise train 16-bit weights in place, with no fp32 copy: AdamW
    updates below bf16's resolution are lost, and 16-bit matmuls are slow on most CPUs.
    (ZeRO-3 loads straight into fp32 partitions, whose dtype this leaves alone.)"""
    if ds_config["bf16"]["enabled"] or ds_config["fp16"]["enabled"]:
        return
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        model.float()


def _count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    def numel(p: torch.nn.Parameter) -> int:
        return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions report ds_numel

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(numel(p) for p in model.parameters())


def _deepspeed_engine(model: torch.nn.Module, spec: Any, task: Any, ds_config: dict, steps: int) -> Any:
    import deepspeed
    from transformers import get_scheduler

    groups = parameter_groups(model.named_parameters(), spec.train.weight_decay)

    def scheduler(optimizer: torch.optim.Optimizer) -> Any:
        return get_scheduler(
            spec.train.lr_scheduler,
            optimizer,
            num_warmup_steps=warmup_steps(spec, steps),
            num_training_steps=steps,
        )

    scalars = _lift_scalar_parameters(model)
    model = _data_parallel(model, spec, task)
    optimizer = None
    if uses_client_optimizer(ds_config):
        # fused: one kernel over all parameters; on CPU it is ~7x faster than the default
        # per-parameter loop (0.03 s against 0.24 s a step for MiniLM's 22M parameters).
        optimizer = torch.optim.AdamW(groups, lr=spec.train.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=None if optimizer is not None else groups,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,
    )
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        engine.enable_backward_allreduce = False  # DDP's reducer has already averaged them
    engine.raft_scalar_parameters = scalars
    return engine


def _lift_scalar_parameters(model: torch.nn.Module) -> frozenset[str]:
    """Give 0-dim parameters (CLIP's ``logit_scale``) shape [1]: DeepSpeed's initial
    broadcast views every parameter as bytes, which a 0-dim tensor cannot be. Broadcasting
    makes [1] act like a scalar in the forward pass; saves put the shape back."""
    names = set()
    for name, parameter in model.named_parameters():
        if parameter.dim() == 0:
            parameter.data = parameter.data.reshape(1)
            names.add(name)
    return frozenset(names)


def _data_parallel(model: torch.nn.Module, spec: Any, task: Any) -> torch.nn.Module:
    """ZeRO stage 0 is plain data parallelism, and there DeepSpeed all-reduces every gradient
    in one blocking call after backward. torch's DDP reducer does the same sum in buckets
    while backward is still running, which on CPU (gloo) is ~15% faster a step for
    MiniLM, so raft hands stage 0's gradient sync to it. DeepSpeed still owns the optimizer,
    clipping, schedule and checkpoints. Stages 1-3 partition state, and keep DeepSpeed's."""
    if spec.deepspeed.zero_stage != 0 or not dist.is_initialized():
        return model
    if dist.get_world_size() < 2 and not spec.scaling.elastic:
        return model
    # An elastic run wraps even alone: its checkpoints then hold the same module names
    # ("module.…") whatever the number of workers that wrote or reads them.
    device_ids = [torch.cuda.current_device()] if spec.scaling.use_gpu else None
    if spec.scaling.use_gpu:
        model = model.to(torch.cuda.current_device())
    # A family whose steps leave some trainable parameters out of the graph says so, and
    # DDP then looks for them each step (a graph traversal that costs time otherwise).
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=task.has_unused_parameters
    )


def _hf_model(engine: Any) -> torch.nn.Module:
    """The transformers/peft model inside the engine (and inside DDP, at stage 0)."""
    module = engine.module
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def _backward(engine: Any, loss: torch.Tensor) -> None:
    """Backward; between gradient-accumulation boundaries DDP keeps gradients local."""
    module = engine.module
    if (
        isinstance(module, torch.nn.parallel.DistributedDataParallel)
        and not engine.is_gradient_accumulation_boundary()
    ):
        with module.no_sync():
            engine.backward(loss)
    else:
        engine.backward(loss)


# -- checkpoints ----------------------------------------------------------------------
@dataclass
class Restored:
    state: TrainState
    source: str  # the checkpoint folder's name

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step


def _restore(engine: Any, spec: Any, log: Any, start_from: Any = None) -> Restored | None:
    """Load this run's newest complete checkpoint, or else ``start_from`` (another run's)."""
    checkpoint = _newest_complete_checkpoint(log)
    if checkpoint is None and start_from is not None:
        found = checkpoints.problems(start_from.filesystem, start_from.path)
        if found:
            raise checkpoints.CheckpointDamaged(
                f"checkpoint {start_from.path} is damaged: {'; '.join(found)}"
            )
        checkpoint = start_from
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory, _weights_only_unpickling(engine):
        engine.load_checkpoint(
            os.path.join(directory, DEEPSPEED_DIR),
            tag=DEEPSPEED_TAG,
            load_module_strict=not type(spec.technique).is_adapter and spec.technique.type != "freeze",
        )
        state = TrainState(**json.loads(Path(directory, STATE_FILE).read_text()))
    _apply_learning_rate(engine, spec.train.lr)
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if state.world_size and state.world_size != world_size and state.batches_into_epoch:
        # Elastic: the same examples of the epoch are done, now split over other workers.
        state.batches_into_epoch = state.batches_into_epoch * state.world_size // world_size
        log(f"saved by {state.world_size} workers, resuming with {world_size}")
    name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    log(f"resumed from {name}: epoch {state.epoch}, step {state.global_step}")
    return Restored(state, name)


def _newest_complete_checkpoint(log: Any) -> Any:
    """The run's newest complete checkpoint in storage, checked against its manifest.

    Ray Train hands a restarted worker the latest checkpoint it registered; raft also
    looks at the run's folder itself, because a worker killed right after a checkpoint
    was uploaded can take the registration with it, and a driver restarted with the same
    run name starts from the folder. Damaged ones are skipped, saying why. Rank 0
    decides (reading the manifests once) and tells the others, so all load the same one."""
    latest = ray.train.get_checkpoint()
    storage = ray.train.get_context().get_storage()
    filesystem = storage.storage_filesystem
    decision: list[Any] = [None]
    if ray.train.get_context().get_world_rank() == 0:
        candidates = set(checkpoints.checkpoint_folders(filesystem, storage.experiment_fs_path))
        if latest is not None:
            candidates.add(latest.path)
        decision[0] = checkpoints.newest_complete(filesystem, sorted(candidates)) if candidates else None
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    choice: checkpoints.Choice | None = decision[0]
    if choice is None:
        return None
    if choice.rejected:
        log(checkpoints.describe_rejected(choice))
    if choice.path is None:
        raise checkpoints.CheckpointDamaged(
            "no complete checkpoint to resume from: " + checkpoints.describe_rejected(choice)
        )
    if choice.rejected:
        log(f"falling back to the newest complete checkpoint, {choice.path.rstrip('/').rsplit('/', 1)[-1]}")
    return ray.train.Checkpoint(choice.path, filesystem=filesystem)


def _deepspeed_state_classes() -> list[Any]:
    """The plain DeepSpeed classes its ZeRO optimizer state names (found in saved
    checkpoints with ``torch.serialization.get_unsafe_globals_in_checkpoint``): allowed
    by name, as data; anything else in a file is still refused."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _weights_only_unpickling:
    """DeepSpeed reads its optimizer and scheduler state with ``torch.load(weights_only=False)``,
    the full unpickler, which runs whatever code a file names. raft's checkpoints hold
    only tensors and plain values, so raft reads them with torch's weights-only unpickler,
    which refuses anything else: a planted file cannot run code in the workers."""

    def __init__(self, engine: Any):
        self.engine = engine

    def __enter__(self) -> None:
        checkpoint_engine = self.engine.checkpoint_engine
        self.original = checkpoint_engine.load

        def load(path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(_deepspeed_state_classes()):
                return torch.load(path, map_location=map_location, weights_only=True)

        checkpoint_engine.load = load

    def __exit__(self, *exc: Any) -> None:
        self.engine.checkpoint_engine.load = self.original


def _apply_learning_rate(engine: Any, lr: float) -> None:
    """A restored schedule keeps the peak learning rate it was saved with. Population-based
    training restarts a trial from another trial's checkpoint with a mutated ``train.lr``:
    the schedule goes on from where it was, scaled to the new peak (a no-op on a plain
    resume). Gradient clipping needs nothing: DeepSpeed reads it from this run's config."""
    scheduler = engine.lr_scheduler
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)


def _report(engine: Any, spec: Any, state: TrainState, metrics: dict[str, Any]) -> None:
    """Every worker writes its part of the checkpoint, uploads it, then publishes its
    manifest (raft.checkpoints); Ray Train merges the parts in storage."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    state.world_size = world_size
    frozen = any(not p.requires_grad for p in _hf_model(engine).parameters())
    with tempfile.TemporaryDirectory(prefix="raft-ckpt-") as directory:
        engine.save_checkpoint(
            os.path.join(directory, DEEPSPEED_DIR), tag=DEEPSPEED_TAG, exclude_frozen_parameters=frozen
        )
        _save_hf_model(engine, os.path.join(directory, MODEL_DIR), rank)
        if rank == 0:
            Path(directory, STATE_FILE).write_text(json.dumps(asdict(state)))
        manifest = checkpoints.build_manifest(directory, rank, world_size)

        def upload_then_publish(checkpoint: Any, name: str) -> Any:
            persisted = context.get_storage().persist_current_checkpoint(checkpoint, name)
            checkpoints.publish_manifest(manifest, persisted.filesystem, persisted.path, rank)
            return persisted

        ray.train.report(
            _scalars(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_upload_fn=upload_then_publish,
        )


def _save_hf_model(engine: Any, directory: str, rank: int) -> None:
    """The model in Hugging Face format (adapter alone for peft models), safetensors."""
    if engine.zero_optimization_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: all ranks
    else:
        state_dict = _hf_model(engine).state_dict() if rank == 0 else None
    scalars = getattr(engine, "raft_scalar_parameters", frozenset())
    if state_dict is not None and scalars:
        state_dict = {k: v.reshape(()) if k in scalars else v for k, v in state_dict.items()}
    if rank == 0:
        _hf_model(engine).save_pretrained(directory, state_dict=state_dict, safe_serialization=True)


# -- training and evaluation ----------------------------------------------------------
def _shard_pass(
    shard: Any, task: Any, spec: Any, training: bool = False, index: int = 0, rank: int = 0
) -> Any:
    """One pass over a worker's shard as Ray Data hands it out: collated batches, or (for
    data.group_by_length) windows of rows that ``_batches`` cuts into batches. A training
    pass with data.shuffle: local draws from a shuffle buffer seeded by train.seed, the
    pass's ``index`` and the ``rank``, so that no two epochs repeat an order (raft.data
    reshuffles the blocks each epoch too, but a shard of one block has one order)."""
    buffer = spec.data.shuffle_buffer if training and spec.data.shuffle == "local" else None
    seed = None
    if buffer:
        seed = int(np.random.SeedSequence([spec.train.seed, index, rank]).generate_state(1)[0])
    shuffle = {"local_shuffle_buffer_size": buffer, "local_shuffle_seed": seed}
    if training and spec.data.group_by_length:
        return shard.iter_batches(
            batch_size=spec.train.batch_size * spec.data.length_window,
            batch_format="numpy",
            prefetch_batches=1,
            **shuffle,
        )
    # On a GPU, Ray copies each batch to the device in its own thread. From pageable memory
    # that copy first waits for the GPU to finish all queued work, so the training thread
    # can no longer run ahead of the GPU; from pinned memory it is asynchronous.
    return shard.iter_torch_batches(
        batch_size=spec.train.batch_size,
        collate_fn=task.collate,
        prefetch_batches=2,
        pin_memory=spec.scaling.use_gpu,
        **shuffle,
    )


def _batches(
    shard: Any,
    task: Any,
    spec: Any,
    device: torch.device,
    training: bool = False,
    epoch: int = 0,
    started: _Prefetched | None = None,
):
    """The pass's batches on ``device``; ``started`` is this pass already begun."""
    if started is None:
        rank = ray.train.get_context().get_world_rank() if training else 0
        source = _shard_pass(shard, task, spec, training, epoch, rank)
    else:
        source = started
    try:
        if training and spec.data.group_by_length:
            source = _length_grouped(source, task, spec, epoch)
        for batch in source:
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    finally:
        if started is not None:
            started.close()


def _length_grouped(windows: Any, task: Any, spec: Any, epoch: int):
    """data.group_by_length: windows of ``length_window`` batches, each cut into batches of
    rows of similar length (raft.batching), collated here instead of in Ray's thread."""
    size = spec.train.batch_size
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng([spec.train.seed, epoch, rank])
    for window in windows:
        lengths = batching.row_lengths(window)
        if lengths is None:  # no token lengths: batches in the order read
            lengths = np.zeros(len(next(iter(window.values()))), dtype=np.int64)
        for rows in batching.length_groups(lengths, size, rng):
            batch = task.collate({key: value[rows] for key, value in window.items()})
            # Pinned, so that _batches' copy to the GPU does not wait for the GPU to drain.
            yield {k: v.pin_memory() for k, v in batch.items()} if spec.scaling.use_gpu else batch


class _Prefetched:
    """A shard pass begun in a background thread, a few items ahead of its reader.

    The first pass over a Ray Data shard pays the pipeline's start-up: the split
    coordinator's epoch barrier, read and preprocessing tasks scheduled, the first blocks
    tokenized. Begun before the model loads, that wait overlaps the model load and
    DeepSpeed's set-up instead of following them. Errors reach the reader as they were
    raised; ``close`` stops the thread when the reader leaves early. With ``start=False``
    the pass begins at ``start()``, or when it is first read."""

    def __init__(self, items: Any, depth: int = 2, start: bool = True):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(items,), name="raft-prefetch", daemon=True)
        self._started = threading.Lock()
        if start:
            self.start()

    def start(self) -> None:
        with self._started:
            if self._thread.ident is None:  # a thread starts once
                self._thread.start()

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, items: Any) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the reader, raised there
            self._put(("error", error))

    def __iter__(self):
        self.start()
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()


class _FirstStep:
    """Stamps this process's first training batch and first optimizer step, and measures the tensors the
    worker holds at the next backward: weights, gradients and optimizer state all exist
    then (the optimizer's state appears at its first step; gradients are freed after each)."""

    def __init__(self, timeline: dict[str, float], engine: Any):
        self.timeline, self.engine, self.memory = timeline, engine, None
        self._pending: list[Any] = []

    def then(self, action: Any) -> None:
        """Run ``action`` after the first optimizer step (now, if it was taken)."""
        if "first_step" in self.timeline:
            action()
        else:
            self._pending.append(action)

    def batch_ready(self) -> None:
        self.timeline.setdefault("first_batch", time.time())

    def stepped(self) -> None:
        if "first_step" not in self.timeline:
            self.timeline["first_step"] = time.time()
            for action in self._pending:
                action()
            self._pending.clear()

    def after_backward(self) -> None:
        if self.memory is None and "first_step" in self.timeline:
            self.measure()

    def measure(self) -> None:
        states = list(_model_state_tensors(self.engine))
        self.memory = {
            "model_state_mb": perf.tensor_bytes(states) / perf.MiB,
            "tensor_mb": perf.live_tensor_bytes(states) / perf.MiB,
        }


def _model_state_tensors(engine: Any):
    """Model states: parameters (a ZeRO-3 worker's own partitions too), gradients, and the
    optimizer's state and fp32 copies however DeepSpeed nests them; not its communication
    buckets and buffers (sized by its bucket settings, not by the model)."""
    for parameter in engine.module.parameters():
        yield from (parameter, parameter.grad, getattr(parameter, "ds_tensor", None))
    optimizer, seen = engine.optimizer, set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        for group in getattr(optimizer, "param_groups", []):
            for parameter in group["params"]:
                yield from (parameter, parameter.grad)
        for state in getattr(optimizer, "state", {}).values():
            yield from _tensors_in(state)
        for name, value in vars(optimizer).items():
            if not any(word in name for word in ("bucket", "ipg", "buffer", "pinned")):
                yield from _tensors_in(value)
        optimizer = getattr(optimizer, "optimizer", None)


def _tensors_in(value: Any, depth: int = 2):
    if isinstance(value, torch.Tensor):
        yield value
    elif depth and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item, depth - 1)
    elif depth and isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item, depth - 1)


def _gather_memory(measured: dict[str, float] | None, use_gpu: bool) -> dict[str, list]:
    """Every rank's memory (rank order): its model states and all its live tensors (those
    plus activations and DeepSpeed's buckets, which on a CPU may be reserved and never
    touched) at the backward after its first step; its peak RSS; on a GPU the peak of
    torch's allocator."""
    mine = {
        "model_state_mb": measured and round(measured["model_state_mb"], 3),
        "tensor_mb": measured and round(measured["tensor_mb"], 3),
        "peak_rss_mb": round(perf.peak_rss_bytes() / perf.MiB, 1),
        "device_peak_mb": round(torch.cuda.max_memory_allocated() / perf.MiB, 1) if use_gpu else None,
    }
    everyone = [mine]
    if dist.is_available() and dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    return {key: [rank[key] for rank in everyone] for key in mine}


def _tokens(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | int, int]:
    """(real, fed) input tokens of a batch: fed counts padding, real does not; 0 for
    families without token inputs (pixels, audio features). ``real`` stays a tensor on
    the batch's device: reading it would wait for the GPU."""
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return mask.sum(), mask.numel()
    ids = batch.get("input_ids")
    return (ids.numel(), ids.numel()) if ids is not None else (0, 0)


def _train_one_epoch(
    engine: Any,
    shard: Any,
    task: Any,
    spec: Any,
    state: TrainState,
    steps: int,
    micro_batches: int,
    device: Any,
    log: Any,
    probe: _FirstStep | None = None,
    started: _Prefetched | None = None,
) -> dict[str, float]:
    """One epoch over the worker's shard of ``micro_batches`` batches (a step after every
    gradient_accumulation_steps of them and after the last: ``accumulation_step``)."""
    engine.train()
    accumulation = spec.train.gradient_accumulation_steps
    skip = state.batches_into_epoch
    # The loss is summed on the device: reading it every step would wait for the GPU.
    loss_sum, batches, samples = torch.zeros((), device=device), 0, 0
    tokens, fed, waited = torch.zeros((), dtype=torch.long, device=device), 0, 0.0
    window_start, window_samples = time.perf_counter(), 0
    epoch_start = fetch_start = time.perf_counter()
    for index, batch in enumerate(
        _batches(shard, task, spec, device, training=True, epoch=state.epoch, started=started)
    ):
        if index < skip:  # resuming mid-epoch: these batches were trained before the restart
            continue
        waited += time.perf_counter() - fetch_start
        if probe is not None:
            probe.batch_ready()
        ends_step, scale = accumulation_step(index, micro_batches, accumulation)
        if accumulation > 1:
            engine.set_gradient_accumulation_boundary(ends_step)
        loss = engine(**task.model_inputs(batch)).loss
        _backward(engine, loss * scale if scale != 1.0 else loss)
        if probe is not None:
            probe.after_backward()
        engine.step()
        size = _rows(batch)
        loss_sum += loss.detach().float()
        batches += 1
        samples += size
        window_samples += size
        real, padded = _tokens(batch)
        tokens += real
        fed += padded
        state.batches_into_epoch = index + 1
        if ends_step:
            state.global_step += 1
            if probe is not None:
                probe.stepped()
            if state.global_step % spec.train.log_every_n_steps == 0:
                now = time.perf_counter()
                loss_now, lr, rate = (
                    float(loss_sum) / batches,
                    engine.get_lr()[0],
                    window_samples / (now - window_start),
                )
                log(
                    f"epoch {state.epoch + 1} step {state.global_step}/{steps} "
                    f"loss {loss_now:.4f} lr {lr:.2e} {rate:.1f} samples/s/worker",
                    show=False,
                )
                log.event(
                    event="step",
                    epoch=state.epoch + 1,
                    global_step=state.global_step,
                    loss=loss_now,
                    lr=lr,
                    samples_per_second=rate,
                )
                window_start, window_samples = now, 0
            if (
                spec.train.checkpoint_every_n_steps
                and state.global_step % spec.train.checkpoint_every_n_steps == 0
            ):
                _report(
                    engine,
                    spec,
                    state,
                    {
                        "epoch": state.epoch,
                        "global_step": state.global_step,
                        "train_loss": float(loss_sum) / batches,
                    },
                )
            if _done(state, spec):
                break
        fetch_start = time.perf_counter()
    seconds = time.perf_counter() - epoch_start

    def rate(count: float) -> float:
        return count / seconds if seconds > 0 else 0.0

    # The epoch's loss over every worker's batches (one all-reduce), not rank 0's alone.
    totals = torch.stack(
        [loss_sum.double(), torch.tensor(float(batches), dtype=torch.float64, device=device)]
    )
    if dist.is_initialized():
        dist.all_reduce(totals)
    summed, counted = totals.tolist()
    return {
        "loss": summed / counted if counted else float("nan"),
        "samples": samples,
        "samples_per_second": rate(samples),
        "tokens_per_second": rate(int(tokens)),
        "padded_tokens_per_second": rate(fed),
        "data_wait_fraction": waited / seconds if seconds > 0 else 0.0,
    }


def _done(state: TrainState, spec: Any) -> bool:
    return spec.train.max_steps is not None and state.global_step >= spec.train.max_steps


@torch.no_grad()
def _evaluate(
    engine: Any,
    shard: Any,
    task: Any,
    spec: Any,
    labels: LabelMap | None,
    device: Any,
    samples: list[dict[str, Any]] | None = None,
    started: _Prefetched | None = None,
) -> dict[str, Any]:
    """Validation loss and the family's metrics over every worker's shard (and, for
    generative families, a few generations from validation prompts); ``started`` is the
    pass over the shard already begun."""
    from raft.tasks.base import EvalContext

    engine.eval()
    context = EvalContext(
        model=_hf_model(engine),
        spec=spec.task,
        model_path=spec.model.path,
        # ZeRO-3 gathers parameters in every forward pass: all ranks must keep generating
        # until the slowest is done.
        synced=engine.zero_optimization_stage() == 3 and dist.is_initialized() and dist.get_world_size() > 1,
    )
    loss_sum, weight, rows, stats = 0.0, 0, 0, task.empty_stats(labels)
    for batch in _batches(shard, task, spec, device, started=started):
        outputs = engine(**task.model_inputs(batch))
        scored = loss_weight(batch)
        if scored:  # a batch with nothing scored has a NaN loss
            loss_sum += float(outputs.loss) * scored
            weight += scored
        rows += _rows(batch)
        stats = task.combine_stats(stats, task.eval_stats(outputs, batch, labels, context))
    generations = task.sample_generations(samples or [], context)
    engine.train()
    if task.row_stats:  # per-row statistics (embeddings): every worker's rows, in rank order
        if dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, stats)
            parts = [part for part in gathered if len(part)]  # a worker may have had no rows
            stats = np.concatenate(parts) if parts else stats
        per_row, stats = stats, np.zeros(0)
    # One all-reduce of [loss_sum, weight, rows, stats...]: sums over workers are exact.
    packed = torch.tensor(
        np.concatenate([[loss_sum, weight, rows], stats.ravel()]), dtype=torch.float64, device=device
    )
    if dist.is_initialized():
        dist.all_reduce(packed)
    packed = packed.cpu().numpy()
    total_weight, total_rows = packed[1], int(packed[2])
    if task.row_stats:
        summed = per_row
    else:
        summed = packed[3:].reshape(stats.shape)
        if np.issubdtype(stats.dtype, np.integer):
            summed = summed.round().astype(stats.dtype)
    metrics: dict[str, Any] = {
        f"val_{key}": value for key, value in task.metrics_for(summed, labels, spec.task).items()
    }
    if "val_loss" not in metrics:  # causal LM reports its own, from its shifted token counts
        metrics["val_loss"] = float(packed[0] / total_weight) if total_weight else float("nan")
    metrics["val_rows"] = total_rows
    confusion = None if task.row_stats else task.confusion(summed)
    if confusion is not None:  # kept in the run's history for reports (not a scalar)
        metrics["confusion_matrix"] = np.asarray(confusion).tolist()
    if generations:
        metrics["generations"] = generations
    return metrics


# -- output ---------------------------------------------------------------------------
def skipped_row_metrics(skipped: dict[str, dict[str, int]]) -> dict[str, int]:
    """``{"data.train": {"bad_json": 2}}`` → ``{"skipped_train_bad_json": 2}``: the rows
    ``data.on_bad_rows: skip`` dropped, reported with every epoch's metrics."""
    return {
        f"skipped_{role.removeprefix('data.')}_{reason}": count
        for role, reasons in skipped.items()
        for reason, count in reasons.items()
    }


class _Logger:
    """Rank 0's progress: each line goes to the worker's stdout (Ray's log files; the
    driver's terminal with --verbose), and to the driver's progress board (raft.monitor),
    which shows messages and turns step and epoch events into the progress display."""

    def __init__(self, rank: int, board: Any = None):
        self.rank, self.board = rank, board

    def __call__(self, message: str, show: bool = True) -> None:
        if self.rank != 0:
            return
        # Straight to the process's stdout: Ray Train's patched print would also copy
        # it to its logger, and the driver would show every line twice.
        print(f"[raft] {message}", file=sys.__stdout__, flush=True)
        if show:
            self.event(event="message", text=message)

    def event(self, **event: Any) -> None:
        """Fire-and-forget: a step never waits on the driver."""
        if self.rank == 0 and self.board is not None:
            self.board.push.remote({"time": time.time(), **event})


def _format(metrics: dict[str, Any]) -> str:
    line = " ".join(
        f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in metrics.items()
        if key not in ("epoch", "global_step", "generations", "confusion_matrix")
        and not key.startswith("skipped_")
    )
    for sample in metrics.get("generations", []):
        line += "\n" + _format_generation(sample)
    return line


def _format_generation(sample: dict[str, Any]) -> str:
    return (
        f"    {sample['prompt'][-60:]!r} → {sample['output'][:80]!r} (reference {sample['reference'][:40]!r})"
    )


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _rows(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a batch (whatever the family's inputs: token ids, pixels, features)."""
    return int(next(iter(batch.values())).shape[0])
