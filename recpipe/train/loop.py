"""The training loop every launcher runs in each process.

AdamW with linear warm-up then cosine decay, gradient clipping, bf16 autocast on GPU, gradient
averaging across ranks (DDP under torchrun/Spark, ``hvd.DistributedOptimizer`` under Horovod),
validation on rank 0 with early stopping, atomic checkpoints every N steps and at every epoch end,
and ``resume`` that replays the interrupted epoch's order so the result equals an uninterrupted
run.

Ranks whose shard holds fewer batches than the largest one pad their epoch with zero-gradient
steps (a forward on their last batch times 0), so every rank takes the same optimizer steps with
the same averaged gradients: weights, optimizer state and learning-rate schedule stay identical
on every rank, which DDP's ``join`` (stale optimizer state on joined ranks) and ``hvd.join``
(diverging weights on Gloo, measured) do not give.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from recpipe import storage
from recpipe.config import TrainConfig
from recpipe.data.arrow_loader import ArrowSampleDataset, ShardFile, ShortReadError
from recpipe.data.batch import Batch
from recpipe.models.base import RecModel
from recpipe.models.user_rows import (
    ITEM_SIDE_FILE,
    item_side_state,
    user_row_keys,
    write_user_rows,
)
from recpipe.storage import as_location
from recpipe.train.checkpoint import LAST_FILE, load_state, model_state, save_atomic
from recpipe.train.distributed import Collectives, DistContext, collectives_for
from recpipe.train.optim import RowLazyAdamW, parameter_groups, use_sparse_embedding_gradients
from recpipe.train.pacing import CheckpointPacer
from recpipe.train.spec import TrainSpec
from recpipe.train.validation import Validator

log = logging.getLogger(__name__)

BEST_FILE = "best.pt"
# User rows per Parquet file of user_rows_<model> (at 256 floats a row, 256 MiB a file).
USER_ROWS_PER_FILE = 262_144


class StoppedEarly(Exception):
    """Raised by ``stop_after_steps``: the run stops as if the process had been killed."""


@dataclass
class Progress:
    """Training state that a checkpoint carries besides weights and optimizer."""

    epoch: int = 0  # epoch in progress (or the next one, when step_in_epoch == 0)
    step: int = 0  # optimizer steps so far
    step_in_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at ``total`` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Remote:
    """Stands in for rank 0's validator on other ranks (they only receive its results)."""


_REMOTE = _Remote()


@dataclass
class _Run:
    """One rank's run in progress: what the steps of :class:`Trainer` share and advance."""

    ctx: DistContext
    model: RecModel
    wrapped: torch.nn.Module  # what forward is called on (the DDP wrapper under DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: ArrowSampleDataset
    own_batches: int
    steps_per_epoch: int
    epochs: int
    progress: Progress = field(default_factory=Progress)
    validator: Validator | _Remote | None = None
    loader: Any = None
    samples_seen: int = 0
    pacer: CheckpointPacer = field(default_factory=lambda: CheckpointPacer(None))


@dataclass
class _EpochLoss:
    """This rank's running training loss over one epoch (real batches only, not padding)."""

    started: float = field(default_factory=time.perf_counter)
    total: float = 0.0
    count: int = 0
    parts: dict[str, float] = field(default_factory=dict)  # the model's loss_parts, summed


class Trainer:
    """One rank's training of one model (built in :meth:`run`, not in ``__init__``)."""

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.settings = TrainConfig.model_validate(spec.settings)
        self.comm: Collectives = collectives_for(self.settings.launcher)

    def run(self) -> dict[str, Any]:
        """Train to the end (or early stop); rank 0 writes the model and returns the summary."""
        ctx = self.comm.setup(self.settings.device)
        finished = False
        try:
            summary = self._run(ctx)
            finished = True
            return summary
        finally:
            # The DDP wrapper's reducer holds gloo work objects and sits in reference cycles;
            # freeing it while the process group still exists (not at interpreter exit, after
            # the group is gone) avoids an abort at shutdown.
            gc.collect()
            self.comm.teardown(synchronise=finished)

    def _run(self, ctx: DistContext) -> dict[str, Any]:
        """Set up, restore, train epoch by epoch until done or stopped, then finish.

        Every rank runs the same collectives in the same order, so the order of these steps
        matters.
        """
        self._set_threads(ctx)
        run = self._setup(ctx)
        self._restore(run)
        run.validator = self._validator(ctx)
        run.loader = run.dataset.loader(self.settings.num_workers, ctx.device.type == "cuda")
        started = time.perf_counter()
        # A refit stops at the epoch its validated run chose, on that run's schedule (the
        # learning rate still decays over the configured epochs).
        last = min(run.epochs, self.spec.stop_after_epochs or run.epochs)
        while run.progress.epoch < last and not run.progress.stopped:
            self._epoch(run)
        return self._finish(run, time.perf_counter() - started)

    def _set_threads(self, ctx: DistContext) -> None:
        """Apply ``train.torch_threads``; by default CPU ranks split this machine's threads."""
        threads = self.settings.torch_threads
        if threads is None and ctx.distributed and ctx.device.type == "cpu":
            threads = max(1, (torch.get_num_threads() or 1) // ctx.world_size)
        if threads:
            torch.set_num_threads(threads)

    def _setup(self, ctx: DistContext) -> _Run:
        """Model, this rank's data, the common step count, optimizer and learning-rate schedule."""
        settings = self.settings
        model = self._build(ctx)
        config = model.config
        epochs = min(config.epochs, settings.max_epochs or config.epochs)
        dataset = self._dataset(model, ctx)
        own_batches = dataset.batches_for_rank(settings.num_workers)
        if not own_batches:
            raise ValueError(
                f"rank {ctx.rank} has no training rows in its sample files "
                f"{[f.path for f in dataset.rank_files()]}: train with fewer processes"
            )
        # Every rank takes the largest rank's step count (shorter shards pad, see module doc).
        steps_per_epoch = self.comm.max_int(own_batches)
        total_steps = steps_per_epoch * epochs
        groups = parameter_groups(model, settings.lazy_embeddings)
        if settings.lazy_embeddings and settings.sparse_embedding_gradients and not ctx.distributed:
            use_sparse_embedding_gradients(model)
        wrapped, optimizer = self.comm.prepare(
            model, RowLazyAdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, config.warmup_steps, total_steps)
        )
        pacer = CheckpointPacer(self.settings.checkpoint_max_overhead)
        return _Run(
            ctx, model, wrapped, optimizer, scheduler, dataset, own_batches, steps_per_epoch,
            epochs, pacer=pacer,
        )  # fmt: skip

    def _dataset(self, model: RecModel, ctx: DistContext) -> ArrowSampleDataset:
        """This rank's samples through ``train.loader``."""
        settings = self.settings
        options: dict[str, Any] = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "shuffle_buffer": settings.shuffle_buffer,
            "seed": settings.seed,
            "read_values": model.reads_values,
            "read_context": model.reads_context,
        }
        files = [ShardFile(path, rows) for path, rows in self.spec.shards]
        if settings.loader == "petastorm":
            from recpipe.data.petastorm_loader import PetastormSampleDataset

            return PetastormSampleDataset(
                files, model.sample_kind, model.config.batch_size,
                pool=settings.petastorm_pool, workers=settings.num_workers, **options,
            )  # fmt: skip
        return ArrowSampleDataset(files, model.sample_kind, model.config.batch_size, **options)

    def _build(self, ctx: DistContext) -> RecModel:
        """The model from its config, with the pre-training weights when the spec names them."""
        model = self.spec.new_model()  # the same initial weights on every rank
        if self.spec.init_file:
            model.load_state_dict(load_state(self.spec.init_file)["state_dict"])
        return model.to(ctx.device)

    def _restore(self, run: _Run) -> None:
        """With ``resume``, continue from ``last.pt``; otherwise drop a previous run's files."""
        spec, ctx = self.spec, run.ctx
        last_path = spec.checkpoint_dir / LAST_FILE
        if spec.resume and storage.is_file(last_path):
            state = load_state(last_path)
            run.model.load_state_dict(state["state_dict"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.scheduler.load_state_dict(state["scheduler"])
            run.progress = progress = Progress(**state["progress"])
            self.comm.after_resume(run.model, run.optimizer)
            if ctx.is_main:
                log.info("resumed %s: epoch %d, step %d", spec.model, progress.epoch, progress.step)
        elif ctx.is_main:
            # A stale best.pt would otherwise be taken as this run's best model.
            for stale in (last_path, spec.checkpoint_dir / BEST_FILE):
                storage.delete(stale)

    def _validator(self, ctx: DistContext) -> Validator | _Remote | None:
        """Rank 0's validator; other ranks get a placeholder flag through broadcasts."""
        if self.spec.validation is None:
            return None
        early = self.settings.early_stopping
        usable = 1.0
        validator = None
        if ctx.is_main:
            validator = Validator(
                **self.spec.validation,
                metric=early.metric,
                k=early.k,
                max_users=early.max_users,
                seed=early.seed,
                # The train stage counted the train split's items already: known items from
                # them, instead of streaming the split again on this rank.
                known_items=self.spec.item_counts() > 0,
            )
            usable = float(validator.usable)  # first use: reads the splits
        usable = self.comm.broadcast_floats([usable])[0]
        if not usable:
            if ctx.is_main:
                log.info("%s: no valid rows, early stopping off", self.spec.model)
            return None
        return validator if ctx.is_main else _REMOTE

    def _epoch(self, run: _Run) -> None:
        """Train one epoch (or the rest of an interrupted one), then close it."""
        progress, ctx = run.progress, run.ctx
        epoch = progress.epoch
        run.dataset.set_epoch(epoch)
        skip = progress.step_in_epoch
        run.model.train()
        loss = _EpochLoss()
        bar = tqdm(
            total=run.steps_per_epoch,
            initial=skip,
            desc=f"{self.spec.model} epoch {epoch + 1}/{run.epochs}",
            unit="step",
            disable=not (ctx.is_main and sys.stderr.isatty()),
            leave=False,
        )
        batches = self._batches(run.loader, ctx.device)
        last: Batch | None = None
        for index in range(run.steps_per_epoch):
            batch = next(batches, None)
            if batch is not None:
                last = batch
            if index < skip:
                continue  # replaying the interrupted epoch's order up to the checkpoint
            if last is None:
                raise ShortReadError(f"rank {ctx.rank}: the loader yielded no batch")
            self._step(run, last, padding=batch is None, loss=loss)
            progress.step_in_epoch = index + 1
            bar.update(1)
            self._log_step(run, loss, bar)
            if progress.step % self.settings.checkpoint_every == 0 and run.pacer.due():
                run.pacer.write(lambda: self._checkpoint(run))
            if self.spec.stop_after_steps and progress.step >= self.spec.stop_after_steps:
                raise StoppedEarly(f"stopped after {progress.step} steps")
        # Ending the iteration runs the loader's row accounting against the manifest.
        if next(batches, None) is not None:
            raise ShortReadError(
                f"rank {ctx.rank}: the loader yielded more than the {run.own_batches} batches "
                "the manifest's row counts allow"
            )
        bar.close()
        self._end_epoch(run, loss)

    def _step(self, run: _Run, batch: Batch, padding: bool, loss: _EpochLoss) -> None:
        """One optimizer step on ``batch``; a padding step adds zero gradients."""
        settings, progress = self.settings, run.progress
        # Randomness (dropout, sampled negatives) is seeded per step and rank, so a resumed run
        # draws exactly what the uninterrupted run drew.
        torch.manual_seed(_step_seed(settings.seed, run.ctx.rank, progress.step))
        with _autocast(run.ctx.device, settings.amp):
            value = run.wrapped(batch)
        if padding:
            value = value * 0.0
        run.optimizer.zero_grad()  # set_to_none (the default); Horovod takes no argument
        value.float().backward()
        self.comm.step(run.model, run.optimizer, settings.grad_clip)
        run.scheduler.step()
        progress.step += 1
        if not padding:
            loss.total += float(value.detach()) * len(batch)
            loss.count += len(batch)
            run.samples_seen += len(batch)
            for name, part in run.model.loss_parts().items():
                loss.parts[name] = loss.parts.get(name, 0.0) + float(part) * len(batch)

    def _log_step(self, run: _Run, loss: _EpochLoss, bar: tqdm) -> None:
        """Every ``train.log_every`` steps, rank 0 shows the epoch's loss and rows per second."""
        step = run.progress.step
        if not (run.ctx.is_main and step % self.settings.log_every == 0 and loss.count):
            return
        rate = loss.count / max(time.perf_counter() - loss.started, 1e-9)
        bar.set_postfix(loss=f"{loss.total / loss.count:.4f}", rows_s=f"{rate:,.0f}")
        if bar.disable:  # no terminal: the log takes the progress bar's place
            log.info(
                "%s epoch %d/%d step %d loss %.4f %.0f rows/s (rank 0)",
                self.spec.model, run.progress.epoch + 1, run.epochs, step,
                loss.total / loss.count, rate,
            )  # fmt: skip

    def _end_epoch(self, run: _Run, loss: _EpochLoss) -> None:
        """Record the epoch's mean loss, validate when due, log and checkpoint."""
        progress = run.progress
        mean_loss = self.comm.mean(loss.total, loss.count)
        entry: dict[str, Any] = {
            "epoch": progress.epoch + 1,
            "step": progress.step,
            "loss": round(mean_loss, 6),
            "seconds": round(time.perf_counter() - loss.started, 3),
        }
        # Every rank takes the same steps (padding included), so every rank's model names the
        # same parts and the collectives below pair up.
        names = sorted(run.model.loss_parts())
        if names:
            entry["parts"] = {
                name: round(self.comm.mean(loss.parts.get(name, 0.0), loss.count), 6)
                for name in names
            }
        progress.epoch += 1
        progress.step_in_epoch = 0
        every = self.settings.early_stopping.every_epochs
        if run.validator is not None and progress.epoch % every == 0:
            self._validate(run, entry)
        progress.history.append(entry)
        if run.ctx.is_main:
            log.info(
                "%s epoch %d/%d: loss %.4f%s (%.1fs)", self.spec.model, progress.epoch,
                run.epochs, mean_loss,
                f", valid {entry['metric']:.4f}" if "metric" in entry else "", entry["seconds"],
            )  # fmt: skip
        run.pacer.write(lambda: self._checkpoint(run))

    def _validate(self, run: _Run, entry: dict[str, Any]) -> None:
        """Score on rank 0, share the metric, keep ``best.pt`` and decide on early stopping."""
        progress, model = run.progress, run.model
        metric = 0.0
        if isinstance(run.validator, Validator):
            metric = run.validator.evaluate(model, str(run.ctx.device))
            model.train()
        metric = self.comm.broadcast_floats([metric])[0]
        entry["metric"] = round(metric, 6)
        if metric > progress.best_metric:
            progress.best_metric, progress.best_epoch = metric, progress.epoch
            progress.bad_evals = 0
            if run.ctx.is_main:
                save_atomic(model_state(model), self.spec.checkpoint_dir / BEST_FILE)
        else:
            progress.bad_evals += 1
            if progress.bad_evals >= self.settings.early_stopping.patience:
                progress.stopped = True

    def _checkpoint(self, run: _Run) -> None:
        """Rank 0 writes ``last.pt``: weights, optimizer, schedule and progress."""
        if run.ctx.is_main:
            extra = {
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "progress": dict(run.progress.__dict__),
            }
            save_atomic(model_state(run.model, extra), self.spec.checkpoint_dir / LAST_FILE)

    def _batches(self, loader: Any, device: torch.device) -> Iterator[Batch]:
        """The loader's batches on ``device``."""
        for batch in loader:
            yield batch.to(device, non_blocking=True)

    def _finish(self, run: _Run, seconds: float) -> dict[str, Any]:
        """The run's summary; rank 0 also writes the model file and ``result.json``."""
        summary = self._summary(run, seconds)
        # Training is over (last.pt holds the moments for a resume): the optimizer's moments,
        # two copies of every weight with Adam, would otherwise sit beside the best weights
        # loaded next, the trainer's peak (2.4 GB at 50M events).
        run.optimizer.state.clear()  # no cycles: the moments are freed here
        if run.ctx.is_main:
            self._save_result(run, summary)
        return summary

    def _summary(self, run: _Run, seconds: float) -> dict[str, Any]:
        """What every rank reports (replica checksums gathered from all ranks)."""
        ctx, progress = run.ctx, run.progress
        rows_total = self.comm.sum_floats([float(run.samples_seen)])[0]
        summary: dict[str, Any] = {
            "model": self.spec.model,
            "epochs_run": progress.epoch,
            "steps": progress.step,
            "early_stopped": progress.stopped,
            "world_size": ctx.world_size,
            "collectives": self.comm.name,
            "loader": self.settings.loader,
            "device": str(ctx.device),
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows_total / max(seconds, 1e-9), 1),
            "checkpoints": run.pacer.summary(),
            "history": progress.history,
            "model_config": run.model.config.model_dump(mode="json"),
        }
        if self.spec.start is not None:
            summary["start"] = self.spec.start
        # Where the ranks ran and with which interpreter: evidence of an executor environment.
        here = f"{socket.gethostname()} {sys.executable}"
        summary["ranks"] = self.comm.gather_strings(here) if ctx.distributed else [here]
        if ctx.distributed:
            summary["replica_checksums"] = self.comm.gather_strings(_parameter_digest(run.model))
        return summary

    def _save_result(self, run: _Run, summary: dict[str, Any]) -> None:
        """Write the best validated weights (else the last ones) and the summary (rank 0)."""
        best_path = self.spec.checkpoint_dir / BEST_FILE
        if isinstance(run.validator, Validator) and storage.is_file(best_path):
            state = load_state(best_path)
            summary.update(
                best_epoch=run.progress.best_epoch,
                best_valid_metric=round(run.progress.best_metric, 6),
                validation=run.validator.describe(),
            )
        else:
            state = model_state(run.model)
        state["training"] = {k: v for k, v in summary.items() if k != "history"}
        save_atomic(state, self.spec.model_file)
        if self.spec.user_rows_dir and user_row_keys(state):
            rows = write_user_rows(state, self.spec.user_rows_dir, USER_ROWS_PER_FILE)
            item_side = as_location(self.spec.model_file).parent / ITEM_SIDE_FILE
            save_atomic(item_side_state(state), item_side)
            summary["user_rows"] = {"path": self.spec.user_rows_dir, "rows": rows}
        storage.write_text(self.spec.result_file, json.dumps(summary, indent=2))


def _parameter_digest(model: RecModel) -> str:
    """SHA-256 of the weights; gathered from every rank, replicas must agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_from_spec(spec_json: str) -> dict[str, Any]:
    """Entry point for every launcher: train the run described by ``spec_json``."""
    spec = TrainSpec.from_json(spec_json)
    # A rank is a fresh process (torchrun, horovodrun, a Spark executor): it reaches state at
    # URIs with the Hadoop settings the driver's config carried.
    storage.configure(spec.storage)
    return Trainer(spec).run()
