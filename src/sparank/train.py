"""One training loop for every model and regulariser.

The loop is plain mini-batch training (Adam or SGD with momentum) on
cross-entropy; a :class:`~sparank.regularisers.Regulariser` plugs in through
its hooks (inputs, penalty, after_step, finalise). For a given seed the result
is deterministic: the same seed gives the same weights, in any thread or
process, whatever else runs there: every random draw of a run (initialisation,
data order, a regulariser's noise) comes from a ``torch.Generator`` of its own
(:func:`seeded_generator`), never from the global RNG.

Every epoch record carries the optimiser steps taken so far (training and
fine-tuning), and :func:`training_budget` sums a history into the run's total
budget, so that a method that fine-tunes after training is compared with a
counterpart of the same budget (``sparank.regularisers.counterpart``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparank.data import Dataset
from sparank.models import ModelSpec, build_model
from sparank.regularisers import Dense, Regulariser


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Every default is chosen for digits-sized data on a CPU."""

    epochs: int = 20  # passes over the training set
    batch_size: int = 64
    lr: float = 1e-3  # Adam's default step; use ~0.05 for SGD
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only
    seed: int = 0  # seeds initialisation, shuffling and any randomness in regularisers (seeded_generator)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: the streams of a run's randomness (:func:`seeded_generator`)
STREAMS = ("init", "shuffle", "regulariser")


def seeded_generator(seed: int, stream: str) -> torch.Generator:
    """A new CPU ``torch.Generator`` for one stream of a training run's randomness.

    ``"init"`` (the weights, :func:`~sparank.models.build_model`) and ``"shuffle"``
    (the order of the mini-batches) are seeded with ``seed`` itself: the initial
    weights equal torch's default initialisation after ``torch.manual_seed(seed)``,
    and two runs with one seed share initialisation and data order whatever their
    regularisers draw. ``"regulariser"`` (hard-concrete noise, random PGD starts...)
    is seeded with ``sha256("regulariser:<seed>")``'s first 63 bits, a stream apart.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if stream != "regulariser":
        return torch.Generator().manual_seed(seed)
    derived = int.from_bytes(hashlib.sha256(f"{stream}:{seed}".encode()).digest()[:8], "little") >> 1
    return torch.Generator().manual_seed(derived)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training: mean loss (with penalty), the penalty alone, accuracies, time, steps so far."""

    epoch: int  # 1, 2, ... over training and fine-tuning together
    phase: str  # "train" or "fine_tune"
    loss: float
    penalty: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    steps: int = 0  # optimiser steps taken since training began, this epoch's included (all phases)


@dataclass(frozen=True)
class TrainingBudget:
    """The training a run received, fine-tuning included: what a fair comparison holds equal."""

    epochs: int  # every epoch, training and fine-tuning
    steps: int  # every optimiser step, training and fine-tuning
    train_epochs: int  # epochs of the "train" phase (TrainConfig.epochs)
    fine_tune_epochs: int  # epochs run by the regulariser's finalise

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def training_budget(history: list[EpochRecord]) -> TrainingBudget:
    """Total epochs and optimiser steps of a run's ``history`` (as ``train`` returns it), by phase.

    Example: ``svd_truncate`` trained 20 epochs of 23 steps then fine-tuned 5
    gives ``TrainingBudget(epochs=25, steps=575, train_epochs=20,
    fine_tune_epochs=5)``; its :func:`~sparank.regularisers.counterpart`
    gives the same.
    """
    fine = sum(1 for record in history if record.phase == "fine_tune")
    return TrainingBudget(
        epochs=len(history), steps=history[-1].steps if history else 0, train_epochs=len(history) - fine, fine_tune_epochs=fine
    )


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of ``inputs`` whose argmax logit equals ``labels`` (model in eval mode, restored)."""
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, len(inputs), batch_size):
            logits = model(inputs[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(inputs), 1)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    regulariser: Regulariser | None = None,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> list[EpochRecord]:
    """Train ``model`` in place on ``data.train_*``; returns the per-epoch history.

    Calls the regulariser's hooks (see ``sparank.regularisers.base``) and, at
    the end, its ``finalise`` with a ``fine_tune(epochs)`` callback that runs
    more epochs of the same loop (phase ``"fine_tune"``: a fresh optimiser
    with the same settings, no penalty, the regulariser's ``after_step`` with
    the fine-tune's own progress). ``on_epoch`` is called after every epoch
    (progress display). Shuffling uses a generator seeded from
    ``config.seed``, and the regulariser's ``generator`` is set, before its
    ``prepare``, to the run's ``"regulariser"`` stream (:func:`seeded_generator`):
    nothing here draws from the global RNG. The history's ``steps`` count every
    optimiser step; :func:`training_budget` sums it up.
    """
    reg = regulariser if regulariser is not None else Dense()
    generator = seeded_generator(config.seed, "shuffle")
    history: list[EpochRecord] = []
    steps_done = 0
    reg.generator = seeded_generator(config.seed, "regulariser")
    reg.prepare(model)

    def run_epochs(epochs: int, phase: str) -> None:
        nonlocal steps_done
        optimizer = _make_optimizer(model, config)
        n = len(data.train_x)
        steps_per_epoch = max(1, -(-n // config.batch_size))
        total = epochs * steps_per_epoch
        step = 0
        for epoch in range(epochs):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=generator)
            loss_sum = penalty_sum = 0.0
            correct = 0
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                x, y = data.train_x[idx], data.train_y[idx]
                x = reg.inputs(model, x, y)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                penalty = reg.penalty(model) if phase == "train" else None
                total_loss = loss if penalty is None else loss + penalty
                optimizer.zero_grad(set_to_none=True)
                total_loss.backward()
                optimizer.step()
                step += 1
                steps_done += 1
                reg.after_step(model, step / total)
                loss_sum += float(total_loss.detach()) * len(idx)
                penalty_sum += 0.0 if penalty is None else float(penalty.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == y).sum())
            optimizer.zero_grad(set_to_none=True)  # leave no stale gradients on the model
            record = EpochRecord(
                epoch=len(history) + 1,
                phase=phase,
                loss=loss_sum / n,
                penalty=penalty_sum / n,
                train_accuracy=correct / n,
                test_accuracy=accuracy(model, data.test_x, data.test_y),
                seconds=time.perf_counter() - start,
                steps=steps_done,
            )
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)

    run_epochs(config.epochs, "train")
    reg.finalise(model, lambda epochs: run_epochs(epochs, "fine_tune"))
    model.eval()
    return history


def train_model(
    spec: str | ModelSpec,
    data: Dataset,
    config: TrainConfig,
    regulariser: Regulariser | None = None,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[nn.Sequential, list[EpochRecord]]:
    """Build ``spec`` for ``data`` with weights seeded from ``config.seed``, train it, return it with its history.

    The weights are drawn from the run's ``"init"`` generator (:func:`seeded_generator`), the same
    numbers as ``torch.manual_seed(config.seed)`` then torch's default initialisation, but the
    global RNG is neither used nor changed: the same config gives bit-identical weights in any
    thread, also while other runs train concurrently.
    """
    model = build_model(spec, data.input_shape, data.num_classes, generator=seeded_generator(config.seed, "init"))
    history = train(model, data, config, regulariser, on_epoch=on_epoch)
    return model, history
