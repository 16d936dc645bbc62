"""The trainer base: the epoch loop, checkpoints, resume, logging and progress plot, with small hooks.

Subclasses override hooks, never the loop:

==========================  =================================================================
``plan_schedule()``         (num_epochs, iterations_per_epoch, validation_iterations, initial_lr)
``build_network()``         the nn.Module (required)
``build_losses()``          loss modules as attributes (optional)
``build_optimizer()``       default Adam over trainable parameters at ``initial_lr``
``build_lr_scheduler()``    default step decay (halved every third of training)
``build_dataloaders()``     (train_iterable, val_iterable) (required); see below
``train_step(batch)``       forward, :meth:`optimize`, return ``{"loss": ...}`` floats (required)
``validation_step(batch)``  no-grad metrics ``{"loss": ..., "psnr": ...}`` (required)
``on_train_start()``, ``on_epoch_start(epoch)``, ``on_epoch_end(epoch, logs)``, ``on_train_end()``
``final_validation()``      after training (and for ``--val``); default does nothing
``trainer_info()``          the dict written to ``trainer.json``; extend with ``super()``
``write_model_folder()``    copies plans / dataset description into the model folder
``extra_checkpoint_state()`` / ``load_extra_checkpoint_state(state)``: anything else to resume
==========================  =================================================================

Distributed (torchrun / ``--num_gpus``, :mod:`unisyn_v2.training.distributed`): ``train_step`` runs its
network calls through :meth:`run_network` (one DDP forward, so backward all-reduces the gradients),
epoch logs are averaged over ranks, and only rank 0 (``self.distributed.is_main``) writes files.

Data contract: the train iterable is iterated once for the whole run (``next`` is called
``iterations_per_epoch`` times per epoch); the validation iterable is iterated afresh every epoch
(``validation_iterations`` batches at most). If the train iterable has ``state_dict()`` /
``load_state_dict()`` they are saved in checkpoints and restored before iteration starts; a
``close()`` method is called at the end. Logged keys are prefixed ``train_`` / ``val_``; the best
checkpoint follows ``best_metric_key`` (default ``val_psnr``, maximised).

Folders: ``output_folder`` is the model folder ``<Trainer>__<plans>__<configuration>``; this fold
writes into ``output_folder / f"fold_{fold}"``. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from unisyn_v2.contracts.plans import Plans
from unisyn_v2.contracts.model_layout import (
    BEST_CHECKPOINT, DATASET_FILE, FINAL_CHECKPOINT, FINGERPRINT_FILE, LATEST_CHECKPOINT, PROGRESS_PLOT, TRAINING_LOG,
    ModelFolderName, ModelLayout,
)
from unisyn_v2.io_utils import copy_file_atomic, remove_stale_temp_files, write_json_atomic
from unisyn_v2.training.checkpointing import CheckpointMixin, find_resume_checkpoint, seed_everything
from unisyn_v2.training.distributed import DistributedContext
from unisyn_v2.models.registry import short_name_of
from unisyn_v2.training.progress import ProgressLogger, attach_file_log, detach_file_log, format_epoch_line
from unisyn_v2.training.schedule import StepDecayScheduler
from unisyn_v2.training.settings import TrainerSettings, cpu_threads_for_training

logger = logging.getLogger(__name__)


class TrainerBase(CheckpointMixin):
    """Owns the loop; subclasses provide the network, data and steps through the hooks above."""

    best_metric_key: ClassVar[str] = "val_psnr"
    best_metric_mode: ClassVar[str] = "max"  # "max" or "min"
    default_configuration: ClassVar[str | None] = None  # None: the plans' default configuration
    default_fold: ClassVar[int | str] = 0
    plot_every_s: ClassVar[float] = 30.0  # redraw progress.png at most this often (and after the last epoch)
    supports_distributed: ClassVar[bool] = True  # False: refuse torchrun / --num_gpus
    ddp_find_unused_parameters: ClassVar[bool] = False  # True when a step leaves trainable parameters unused

    def __init__(self, plans: Plans, configuration: str, fold: int | str, dataset_name: str,
                 preprocessed_folder: Path, output_folder: Path, device: torch.device,
                 settings: TrainerSettings | None = None) -> None:
        self.plans = plans
        self.configuration = configuration
        self.fold: int | str = fold if fold == "all" else int(fold)
        self.dataset_name = dataset_name
        self.preprocessed_folder = Path(preprocessed_folder)
        self.model_folder = Path(output_folder)
        self.layout = ModelLayout(self.model_folder)
        self.fold_folder = self.layout.fold(self.fold)
        self.device = torch.device(device)
        self.settings = settings or TrainerSettings()
        self.distributed = DistributedContext.current()
        if self.distributed.enabled and not self.supports_distributed:
            raise ValueError(f"{type(self).__name__} trains in one process; run it without torchrun / --num_gpus")
        epochs, iterations, val_iterations, lr = self.plan_schedule()
        self.num_epochs = self.settings.num_epochs or epochs
        self.iterations_per_epoch = self.settings.iterations_per_epoch or iterations
        self.validation_iterations = self.settings.validation_iterations or val_iterations
        self.initial_lr = lr
        self.grad_clip = float(plans.training.grad_clip)
        self.use_amp = self.device.type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.network: nn.Module | None = None
        self._network_call: Any = None  # set by initialize(): the network, DDP-wrapped when distributed
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.train_loader: Iterable[Any] | None = None
        self.val_loader: Iterable[Any] | None = None
        self.current_epoch = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.progress = ProgressLogger()
        self.was_initialized = False

    @classmethod
    def model_folder_name(cls, plans_name: str, configuration: str, settings: TrainerSettings | None = None) -> str:
        """``<Class>__<plans>__<configuration>`` (the model folder under results/<Dataset>/)."""
        return str(ModelFolderName(cls.__name__, plans_name, configuration))

    # ----------------------------------------------------------------- hooks
    def plan_schedule(self) -> tuple[int, int, int, float]:
        """(num_epochs, iterations_per_epoch, validation_iterations, initial_lr) from the plans."""
        t = self.plans.training
        return t.num_epochs, t.iterations_per_epoch, t.validation_iterations, t.initial_lr

    def build_network(self) -> nn.Module:
        """Return the network (on any device; the base moves it to ``self.device``)."""
        raise NotImplementedError

    def build_losses(self) -> None:
        """Create loss modules as attributes."""

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters (the papers' optimiser)."""
        assert self.network is not None
        return torch.optim.Adam([p for p in self.network.parameters() if p.requires_grad], lr=self.initial_lr)

    def build_lr_scheduler(self) -> Any:
        """Step decay: lr halved every ``lr_halving_every_fraction`` of the epochs."""
        assert self.optimizer is not None
        return StepDecayScheduler(self.optimizer, self.initial_lr, self.num_epochs,
                                  self.plans.training.lr_halving_every_fraction)

    def build_dataloaders(self) -> tuple[Iterable[Any], Iterable[Any] | None]:
        """(train_iterable, val_iterable or None)."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimisation step; return float logs, at least ``loss``."""
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, float]:
        """Metrics of one validation batch (called under no_grad, network in eval mode)."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        """Called once before the first epoch of this session."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch's training iterations."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Called after validation and before checkpointing; may add entries to ``logs``."""

    def on_train_end(self) -> None:
        """Called after the final checkpoint, before the final validation."""

    def final_validation(self) -> dict[str, Any] | None:
        """Validate the held-out cases with the full predictor; default: nothing."""
        return None

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """More weights-only-safe state to store (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_checkpoint_state` stored."""

    def trainer_info(self) -> dict[str, Any]:
        """Content of ``trainer.json`` (extend in subclasses with ``{**super().trainer_info(), ...}``)."""
        cls = type(self)
        return {"trainer_class": f"{cls.__module__}:{cls.__qualname__}", "trainer_name": short_name_of(cls) or cls.__name__,
                "dataset_name": self.dataset_name, "plans_name": self.plans.plans_name,
                "configuration": self.configuration}

    def write_model_folder(self) -> None:
        """Copy plans, dataset description and fingerprint next to the folds; write trainer.json."""
        self.model_folder.mkdir(parents=True, exist_ok=True)
        self.plans.save(self.layout.plans)
        for name in (DATASET_FILE, FINGERPRINT_FILE):
            if (self.preprocessed_folder / name).is_file():
                copy_file_atomic(self.preprocessed_folder / name, self.model_folder / name)
        write_json_atomic(self.layout.trainer_info, self.trainer_info())

    # -------------------------------------------------------------- services
    def initialize(self) -> None:
        """Seed, build network, losses, optimiser, scheduler and data (idempotent)."""
        if self.was_initialized:
            return
        seed_everything(self.settings.seed)
        if self.settings.deterministic:
            torch.use_deterministic_algorithms(True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.network = self.build_network().to(self.device)
        self._network_call = self.distributed.wrap(self.network, self.device, self.ddp_find_unused_parameters)
        self.build_losses()
        self.optimizer = self.build_optimizer()
        self.lr_scheduler = self.build_lr_scheduler()
        self.train_loader, self.val_loader = self.build_dataloaders()
        self.was_initialized = True

    def loader_workers(self) -> int:
        """Background data-loading processes this trainer starts (they share the cores with training)."""
        return 0

    def run_network(self, function: Any, *args: Any) -> Any:
        """``function(network, *args)`` for a training step; under DDP one forward, so backward syncs gradients."""
        return self._network_call(function, *args)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision on CUDA, a no-op elsewhere."""
        if self.use_amp:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def optimize(self, loss: torch.Tensor) -> None:
        """zero_grad, backward (scaled on CUDA), clip gradients at ``grad_clip`` on CUDA, step."""
        assert self.optimizer is not None and self.network is not None
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            if self.device.type != "cpu":
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.optimizer.step()

    @staticmethod
    def _describe_file(path: Path | None) -> tuple[str, int] | None:
        return None if path is None else (Path(path).name, Path(path).stat().st_size)

    def _is_better(self, value: float) -> bool:
        if not np.isfinite(value) or self.best_metric is None:
            return bool(np.isfinite(value))
        return value > self.best_metric if self.best_metric_mode == "max" else value < self.best_metric

    def run_epoch(self, epoch: int, train_iterator: Iterator[Any]) -> dict[str, float]:
        """Train ``iterations_per_epoch`` steps, validate, return the epoch's mean logs."""
        assert self.network is not None
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else float("nan")
        self.on_epoch_start(epoch)
        self.network.train()
        sums: dict[str, list[float]] = {}
        for _ in range(self.iterations_per_epoch):
            for key, value in self.train_step(next(train_iterator)).items():
                sums.setdefault(f"train_{key}", []).append(float(value))
        if self.val_loader is not None and self.validation_iterations > 0:
            self.network.eval()
            with torch.no_grad():
                for _, batch in zip(range(self.validation_iterations), self.val_loader):
                    for key, value in self.validation_step(batch).items():
                        sums.setdefault(f"val_{key}", []).append(float(value))
        logs = self.distributed.reduce_means(sums)  # the mean over every rank's batches
        logs["lr"] = lr
        logs["epoch_time"] = time.perf_counter() - start
        return logs

    def run(self) -> dict[str, Any] | None:
        """Train (or resume, or only validate) and return the final validation summary."""
        main = self.distributed.is_main
        if main:
            remove_stale_temp_files(self.model_folder, self.fold_folder, self.layout.validation(self.fold),
                                    self.layout.text_encoder)
        handler = attach_file_log(self.fold_folder / TRAINING_LOG) if main else None
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # only ever lowered; restored below
            torch.set_num_threads(min(threads, cpu_threads_for_training(self.loader_workers())))
        try:
            self.initialize()
            if self.settings.validation_only:
                if not main:
                    return None
                self.load_checkpoint(self.layout.checkpoint(self.fold), restore_training_state=False)
                return self.final_validation()
            if main:
                self.write_model_folder()
            if self.settings.continue_training:
                resume = find_resume_checkpoint(self.fold_folder)
                if self.settings.resume_from is not None:
                    resume = self.fold_folder / self.settings.resume_from
                    if not resume.is_file():
                        raise FileNotFoundError(f"--resume_from: {resume} does not exist (the fold holds "
                                                f"{', '.join(sorted(p.name for p in self.fold_folder.glob('*.pth'))) or 'no checkpoint'})")
                seen = set(self.distributed.all_gather_object(self._describe_file(resume)))
                if len(seen) > 1:
                    raise RuntimeError(f"--c: the ranks see different checkpoints ({sorted(map(str, seen))}); the "
                                       "results folder must be one folder shared by every rank")
                if resume is None:
                    logger.warning("--c: no checkpoint in %s; starting from scratch", self.fold_folder)
                else:
                    self.load_checkpoint(resume)
            elif self.settings.pretrained_weights is not None:
                self.load_pretrained_weights(self.settings.pretrained_weights)
            self._train()
            return self.final_validation() if self.settings.final_validation and main else None
        except KeyboardInterrupt:
            logger.error("interrupted in epoch %d; continue with the same command plus --c", self.current_epoch + 1)
            raise
        finally:
            torch.set_num_threads(threads)
            for loader in (self.train_loader, self.val_loader):
                close = getattr(loader, "close", None)
                if callable(close):
                    close()
            if handler is not None:
                detach_file_log(handler)

    def _train(self) -> None:
        if self.current_epoch >= self.num_epochs and self.layout.checkpoint(self.fold).is_file():
            # --c on a finished run: keep checkpoint_final as it is (only the end-of-training hook reruns,
            # so an artifact interrupted after the last checkpoint still gets written)
            logger.info("%s fold %s already finished its %d epochs; nothing to train", type(self).__name__,
                        self.fold, self.num_epochs)
            self.on_train_end()
            return
        logger.info("%s: %s fold %s, %d epochs x %d iterations, device %s, starting at epoch %d",
                    type(self).__name__, self.dataset_name, self.fold, self.num_epochs, self.iterations_per_epoch,
                    self.device, self.current_epoch + 1)
        if self.distributed.enabled:
            logger.info("data-parallel: %d processes (%s backend), the batch split across them",
                        self.distributed.world_size, torch.distributed.get_backend())
        assert self.train_loader is not None
        train_iterator = iter(self.train_loader)
        last_plot = -float("inf")
        self.on_train_start()
        for epoch in range(self.current_epoch, self.num_epochs):
            logs = self.run_epoch(epoch, train_iterator)
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
            self.current_epoch = epoch + 1
            self.on_epoch_end(epoch, logs)
            self.progress.log_epoch(epoch, logs)
            logger.info(format_epoch_line(epoch, self.num_epochs, logs))
            value = logs.get(self.best_metric_key)
            if value is not None and self._is_better(value):
                self.best_metric, self.best_epoch = float(value), epoch
                self.save_checkpoint(BEST_CHECKPOINT)
                logger.info("new best %s %.4f", self.best_metric_key, value)
            if self.current_epoch % self.settings.save_every == 0 or self.current_epoch == self.num_epochs:
                self.save_checkpoint(LATEST_CHECKPOINT)
            if self.distributed.is_main and (time.monotonic() - last_plot >= self.plot_every_s
                                             or self.current_epoch == self.num_epochs):
                self.progress.plot(self.fold_folder / PROGRESS_PLOT, f"{type(self).__name__} fold {self.fold}")
                last_plot = time.monotonic()
        self.save_checkpoint(FINAL_CHECKPOINT)
        if self.distributed.is_main:
            (self.fold_folder / LATEST_CHECKPOINT).unlink(missing_ok=True)
        self.on_train_end()
