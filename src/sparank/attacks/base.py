"""What every attack shares: the input contract, the statuses, and verification of adversarials.

An attack here takes ``(model, inputs, labels)`` plus keyword settings and
returns per-input results that :mod:`sparank.robustness` turns into a
:class:`~sparank.robustness.RobustnessResult`. Every adversarial an attack
reports is re-checked by :func:`verify_points`: a fresh forward pass,
misclassified beyond floating-point noise in any batching (PROTOCOL §2).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict
from enum import IntEnum
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")


class Status(IntEnum):
    """What happened to one input along its ray (stored as these integers)."""

    FOOLED = 0  # misclassified at some ε in (0, eps_max]: ε* = eps_hi
    CLEAN_WRONG = 1  # misclassified at ε = 0: ε* = 0
    CENSORED = 2  # classified correctly at every scanned ε up to eps_max: ε* > eps_max
    NO_DIRECTION = 3  # correct at ε = 0 and the direction is exactly zero: the ray does not move


#: A margin within this many units in the last place (of the logits' dtype, times max(1, max|logit|))
#: of zero is floating-point noise: the class of such a point can change with how the model is
#: batched (BLAS rounding), so it is never returned as a verified misclassified point. Measured
#: alone-versus-batched differences on trained MLPs and CNNs are at most about 4 such units.
NOISE_ULPS = 8


def check_norm(norm: str) -> None:
    """ValueError naming the norms this package knows, if ``norm`` is not one of them."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


class Bounds(NamedTuple):
    """The input box ``[lo, hi]^d``."""

    lo: float
    hi: float


Progress = Callable[[int, int], None]
"""``progress(resolved, total)``: called as inputs are resolved (for progress bars)."""


def as_tensor(value: object, name: str) -> Tensor:
    """``value`` as a tensor: tensors pass through, numpy arrays are wrapped; anything else is a ValueError."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(value).__name__}")


def check_inputs(inputs: Tensor, labels: Tensor, bounds: Bounds | tuple[float, float]) -> Bounds:
    """Validate a batch against the protocol's contract; returns the bounds as :class:`Bounds`."""
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {bounds}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs must be a batch shaped (N, ...), got shape {tuple(inputs.shape)}")
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise ValueError(f"labels must be shaped (N,) = ({len(inputs)},), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be integer class indices (torch.int64), got dtype {labels.dtype}")
    if len(labels) and int(labels.min()) < 0:
        bad = torch.nonzero(labels < 0).squeeze(1)
        raise ValueError(f"labels must be class indices >= 0; got {int(labels[bad[0]])} at input {int(bad[0])}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point in [{lo}, {hi}], got dtype {inputs.dtype}")
    if len(inputs) and not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or inf")
    if len(inputs) and (float(inputs.min()) < lo or float(inputs.max()) > hi):
        raise ValueError(
            f"inputs lie outside bounds [{lo}, {hi}] (min {float(inputs.min()):.4g}, max {float(inputs.max()):.4g}); "
            "pass the right bounds, and put any normalisation inside the model (PROTOCOL §1)"
        )
    return Bounds(lo, hi)


def check_model_dtype(model: nn.Module, inputs: Tensor) -> None:
    """ValueError if the model's floating-point parameters are not of the inputs' dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), inputs.dtype)
    if dtype != inputs.dtype:
        raise ValueError(
            f"inputs are {inputs.dtype} but the model's parameters are {dtype}: pass inputs of the "
            f"model's dtype (inputs.to({dtype})) or measure a converted model (model.to({inputs.dtype}))"
        )


def min_tol(dtype: torch.dtype, bounds: Bounds | tuple[float, float], eps_max: float) -> float:
    """The smallest bracket width the inputs' dtype resolves: below it, distinct ε give the same point ``x(ε)``."""
    return 2.0 * torch.finfo(dtype).eps * max(abs(float(bounds[0])), abs(float(bounds[1])), float(eps_max))


def check_tol(tol: float, dtype: torch.dtype, bounds: Bounds | tuple[float, float], eps_max: float) -> None:
    """ValueError if ``tol`` is finer than what ``dtype`` inputs resolve at ``eps_max``."""
    floor = min_tol(dtype, bounds, eps_max)
    if tol < floor:
        raise ValueError(
            f"tol={tol:g} is below what {dtype} inputs resolve at eps_max={eps_max:g} (points x(ε) closer than "
            f"{floor:.3g} in ε coincide): use tol >= {floor:.3g}, or float64 inputs and model"
        )


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    return fallback


def logits_of(model: nn.Module, x: Tensor, labels: Tensor | None = None) -> Tensor:
    """``model(x)``, checked: a floating tensor shaped ``(N, K)`` with ``K >= 2`` (and ``K`` above every label)."""
    out = model(x)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"the model must return a logits tensor shaped (N, K); it returned a {type(out).__name__}: "
            "wrap it so that forward returns the logits alone"
        )
    if out.ndim != 2 or out.shape[0] != len(x) or out.shape[1] < 2:
        raise ValueError(
            f"the model must return logits shaped (N, K) with K >= 2 classes; for N = {len(x)} inputs it returned shape {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise ValueError(f"the model must return floating-point logits, got dtype {out.dtype}")
    if labels is not None and len(labels) and int(labels.max()) >= out.shape[1]:
        j = int(labels.argmax())
        raise ValueError(
            f"labels must be class indices in [0, {out.shape[1]}) for a model with {out.shape[1]} outputs; got label {int(labels[j])}"
        )
    return out


def _check_finite(values: Tensor, owners: Tensor, what: str) -> None:
    """ValueError naming the inputs whose ``values`` (one row per entry of ``owners``) are not all finite."""
    bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
    if bool(bad.any()):
        inputs = sorted({int(i) for i in owners[bad].tolist()})
        shown = ", ".join(map(str, inputs[:10])) + (", ..." if len(inputs) > 10 else "")
        raise ValueError(
            f"the model gives non-finite {what} (NaN or inf) for {len(inputs)} input(s), at indices {shown}: "
            "the measure needs finite values; check the model's weights and forward"
        )


def loss_gradient_weights(logits: Tensor, labels: Tensor) -> Tensor:
    """``∂CE/∂z`` divided by ``1 − p_y``, per input: exact at any margin (``(N, K)``, the logits' dtype).

    The gradient of cross-entropy with respect to the logits is ``p − e_y``. Its
    ``y`` entry ``p_y − 1`` cancels to 0 once ``p_y`` rounds to 1 (margins above
    about 17 in float32), and every ``p_j`` underflows at larger margins, so the
    input gradient saturates to the wrong direction or to exactly 0. Divided by
    the positive number ``1 − p_y = Σ_{j≠y} p_j`` it is ``−1`` at ``y`` and
    ``exp(z_j − logsumexp_{k≠y} z_k)`` elsewhere (summing to 1): nothing cancels
    or underflows, and the sign and the L2 direction of the input gradient are
    unchanged by the positive factor.
    """
    y = labels[:, None]
    others = logits.detach().scatter(1, y, -math.inf)
    # softmax over the other classes: exp(z_j − logsumexp_{k≠y} z_k), 0 at y; the largest is exp(0)·…, never 0
    return torch.softmax(others, dim=1).scatter(1, y, -1.0)


@torch.inference_mode()
def _evaluate(model: nn.Module, rows: Tensor, labels: Tensor, owners: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: the margin ``f_y − max_{j≠y} f_j`` (float64), its noise floor (float64), and ``argmax != label``.

    The rows go through the model ``batch_size`` at a time (1: each row alone); ``owners[i]`` is
    the input row ``i`` belongs to (named in errors). The noise floor is
    ``NOISE_ULPS · eps(dtype) · max(1, max_j |f_j|)``.
    """
    if not len(rows):
        empty = torch.empty(0, dtype=torch.float64, device=rows.device)
        return empty, empty, torch.empty(0, dtype=torch.bool, device=rows.device)
    logits = torch.cat(
        [
            logits_of(model, rows[start : start + batch_size], labels[start : start + batch_size])
            for start in range(0, len(rows), batch_size)
        ]
    )
    return margins_of(logits, labels, owners)


def margins_of(logits: Tensor, labels: Tensor, owners: Tensor, check: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """What :func:`_evaluate` returns, from the logits ``(R, K)`` of its rows (``check``: non-finite logits are a
    ValueError naming the inputs; off where the caller checked them already)."""
    if check:
        _check_finite(logits, owners, "logits")
    y = labels[:, None]
    wrong = logits.argmax(dim=1) != labels
    true = logits.gather(1, y).squeeze(1)
    others = logits.scatter(1, y, float("-inf")).amax(dim=1)
    margin = (true - others).double()
    floor = NOISE_ULPS * torch.finfo(logits.dtype).eps * logits.abs().amax(dim=1).double().clamp_min(1.0)
    return margin, floor, wrong


#: How many of the returned points are re-evaluated alone in any case (the nearest to the boundary,
#: in units of their noise floor); all of them are when one of these shows more noise than half the floor.
ALONE_SAMPLE = 64


def verify_points(
    model: nn.Module, points: Tensor, labels: Tensor, owners: Tensor, batch_size: int, batched: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, int]:
    """Which ``points`` are misclassified in any batching: re-evaluated in a batch, and alone (see below).

    A point is accepted where its margins ``f_y − max_{j≠y} f_j`` are below
    ``−max(δ/2, 4·|alone − batched|)``, ``δ`` the noise floor of :data:`NOISE_ULPS`.
    Alone (a batch of one) are evaluated the :data:`ALONE_SAMPLE` points nearest the
    boundary relative to ``δ``, and every point if any of those differs from its
    batched margin by more than ``δ/2``: the floor is then not a safe bound for this model.

    Args:
        points: ``(M, *shape)`` candidate adversarials; ``labels`` ``(M,)`` their true labels;
            ``owners`` ``(M,)`` the input each belongs to (named in errors).
        batched: ``(margins, floors)`` ``(M,)`` of these very points from a batched evaluation on this model
            made earlier (by a search that evaluated them), NaN where there was none: only the others are
            evaluated in a batch here.

    Returns:
        (accepted ``(M,)`` bool, the allowance a retry should aim past: twice the bound plus the
        difference ``(M,)`` float64, rows evaluated).
    """
    if batched is None:
        m_batch, f_batch, _ = _evaluate(model, points, labels, owners, batch_size)
        rows = len(points)
    else:
        m_batch, f_batch = batched[0].clone(), batched[1].clone()
        new = torch.nonzero(torch.isnan(m_batch) | torch.isnan(f_batch)).squeeze(1)
        m_batch[new], f_batch[new], _ = _evaluate(model, points[new], labels[new], owners[new], batch_size)
        rows = len(new)
    m_alone = m_batch.clone()
    order = torch.argsort(m_batch / f_batch, descending=True)  # nearest the boundary first (margins < 0)
    first = order[:ALONE_SAMPLE]
    m_alone[first] = _evaluate(model, points[first], labels[first], owners[first], 1)[0]
    rows += len(first)
    if bool(((m_alone[first] - m_batch[first]).abs() > 0.5 * f_batch[first]).any()):
        rest = order[ALONE_SAMPLE:]
        m_alone[rest] = _evaluate(model, points[rest], labels[rest], owners[rest], 1)[0]
        rows += len(rest)
    difference = (m_alone - m_batch).abs()
    # half the floor a search aims past, so that a point found just past it is not refused for
    # the rounding of one more evaluation
    bound = torch.maximum(0.5 * f_batch, 4 * difference)
    ok = (m_batch < -bound) & (m_alone < -bound)
    return ok, 2 * (bound + difference), rows


def input_gradient(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 256,
    check: bool = True,
    clean: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``∇_x CE(f(x), y)`` divided by ``1 − p_y`` per input: the loss gradient without saturation, ``(N, *shape)``.

    The positive factor changes neither the sign nor the L2 direction (see
    :func:`loss_gradient_weights`). Only the inputs get gradients: the
    parameters' ``.grad`` are untouched. With ``check`` (default), non-finite
    logits or gradients are a ValueError naming the inputs; without, they are returned as they are.
    ``clean`` ``(margins, wrong)``, where given, is filled from the same forward pass with each input's margin
    ``f_y − max_{j≠y} f_j`` (``(N,)`` float64) and whether ``argmax != y`` (``(N,)`` bool).
    """
    out = torch.empty_like(inputs)
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].detach().clone().requires_grad_(True)
        y = labels[start : start + batch_size]
        owners = torch.arange(start, start + len(x))
        with torch.enable_grad():
            logits = logits_of(model, x, y)
            if check:
                _check_finite(logits.detach(), owners, "logits")
            # per input, so each input's gradient is independent of the batch it is in
            weights = loss_gradient_weights(logits, y)
            if clean is not None:
                margin, _, wrong = margins_of(logits.detach(), y, owners, check=False)  # checked above (if asked)
                clean[0][start : start + batch_size], clean[1][start : start + batch_size] = margin, wrong
            if logits.requires_grad:
                (grad,) = torch.autograd.grad((logits * weights).sum(), x, allow_unused=True)
            else:  # the forward pass detaches its input: no gradient reaches x (a masked model)
                grad = None
        if grad is None:
            grad = torch.zeros_like(x)
        if check:
            _check_finite(grad, owners, "input gradients")
        out[start : start + batch_size] = grad
    return out


def normalise(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent step of unit size for ``norm``: ``sign(g)`` (L∞) or ``g/||g||_2`` (L2); 0 where ``g`` is 0."""
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1)
    length = flat.norm(dim=1, keepdim=True)
    return torch.where(length > 0, flat / length.clamp_min(torch.finfo(flat.dtype).tiny), 0.0).view_as(grad)


def distances(adversarials: Tensor, inputs: Tensor, norm: Norm) -> Tensor:
    """``||x_adv − x||`` per input in float64 (the difference of two float32 numbers is exact in float64), ``(N,)``."""
    delta = (adversarials.double() - inputs.double()).flatten(1)
    if delta.shape[1] == 0:
        return torch.zeros(len(delta), dtype=torch.float64, device=delta.device)
    return delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)


def ball_tolerance(
    dtype: torch.dtype,
    bounds: Bounds | tuple[float, float],
    eps: float,
    norm: Norm,
    dim: int,
) -> float:
    """How far outside its ε-ball a verified adversarial may lie: the rounding of storing ``x + δ`` in ``dtype``.

    Each coordinate of ``x + δ`` is rounded once to ``dtype`` (half an ulp of the
    largest magnitude in play, ``max(|lo|, |hi|, ε)``); in L2 the ``dim``
    coordinates add up to at most ``√dim`` times that. A reported adversarial
    ``x_adv`` for radius ``ε`` satisfies ``||x_adv − x|| <= ε + ball_tolerance``.
    """
    ulp = torch.finfo(dtype).eps * max(abs(float(bounds[0])), abs(float(bounds[1])), float(eps))
    return ulp if norm == "linf" else ulp * math.sqrt(max(dim, 1))


def project(delta: Tensor, eps: Tensor, norm: Norm) -> Tensor:
    """``delta`` projected onto the ``norm`` ball of per-input radius ``eps`` ``(N,)``: a new tensor."""
    shape = (-1,) + (1,) * (delta.ndim - 1)
    radius = eps.to(delta.dtype).view(shape)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, radius), -radius)
    length = delta.flatten(1).norm(dim=1).view(shape)
    factor = torch.where(
        length > radius,
        radius / length.clamp_min(torch.finfo(delta.dtype).tiny),
        torch.ones_like(length),
    )
    return delta * factor


def check_refine(refine: object) -> None:
    """ValueError unless ``refine`` (bisections along an adversarial's segment, see :func:`sparank.robustness.measure`) is in [0, 60]."""
    if not (isinstance(refine, int) and not isinstance(refine, bool) and 0 <= refine <= 60):
        raise ValueError(f"refine must be an integer in [0, 60] (bisections along the adversarial's segment; 0: off), got {refine!r}")


class Found(NamedTuple):
    """What a minimisation attack found for each input it was given, before :mod:`sparank.robustness` verifies it.

    ``eps`` is the radius the attack claims: its adversarial lies in the closed
    ``norm`` ball of that radius (for a ray or a fixed-ε attack the ε it was
    run at; for a minimal-norm attack the distance it found). ``eps_lo`` is the
    largest radius it tried below ``eps`` and failed at (0 if none): a fact
    about the attack, not a proof that no adversarial exists there.
    """

    adversarials: Tensor  # (N, *shape) candidates in the inputs' dtype; rows not found are ignored
    found: Tensor  # (N,) bool: the attack claims an adversarial
    eps: Tensor  # (N,) float64: the claimed radius; inf where not found
    eps_lo: Tensor  # (N,) float64
    no_direction: Tensor  # (N,) bool: the attack could not move (a zero gradient or direction)
    forward_rows: int  # rows passed through the model, forward or backward (cost)
    directions: Tensor | None = None  # (N, *shape) ray directions, for ray attacks
    certified: Tensor | None = None  # (N,) bool: the result is proved (FGSM with certify), not scanned; None: not asked
    bound_passes: int = 0  # bound passes over ray segments (certification cost, see sparank.certify)
    # (N,) bool: ``adversarials[i]`` itself was accepted by :func:`verify_points` on this model during the search (the
    # FGSM ray search verifies its brackets as it goes): the measure then checks only its box and ball; None: none was
    verified: Tensor | None = None


class CleanPass(NamedTuple):
    """An attack's own pass over the clean inputs (ε = 0): which the model misclassifies there, by ``argmax``, and
    per-input tensors (``(N, ...)`` each) that :meth:`MinimalAttack.run` takes back for the inputs it is given."""

    wrong: Tensor  # (N,) bool
    data: dict[str, Tensor]

    def take(self, idx: Tensor) -> dict[str, Tensor]:
        return {k: v[idx] for k, v in self.data.items()}


class MinimalAttack(ABC):
    """A minimisation attack: per input, the smallest perturbation it can find (Foolbox's ``MinimizationAttack``).

    Subclasses are keyword-only frozen dataclasses: their fields are their
    settings, stored as data (:meth:`settings`). :meth:`run` is called by
    :func:`sparank.robustness.measure` with the model in eval mode and only
    the inputs the model classifies correctly; it must not modify ``inputs``
    or any parameter's ``.grad`` (take gradients with ``torch.autograd.grad``
    on a copy of the inputs), and it need not verify its candidates: the
    measure does (a fresh forward pass, the box, the ball, any batching),
    except for the points it reports as already accepted by
    :func:`verify_points` on the model (:attr:`Found.verified`), which the
    measure does not evaluate twice.
    """

    name: ClassVar[str]
    #: a white-box gradient attack (its failure on an input another attack fools is a masking sign)
    white_box: ClassVar[bool] = True

    def settings(self) -> dict[str, Any]:
        """The attack's name and every setting, JSON-ready (what the store records)."""
        return {
            "attack": self.name,
            **{k: v for k, v in asdict(self).items() if not k.startswith("_")},
        }  # type: ignore[call-overload]

    def clean_pass(self, model: nn.Module, inputs: Tensor, labels: Tensor, *, norm: Norm, batch_size: int) -> CleanPass | None:
        """The attack's first pass over the clean inputs, where its search starts with one (FGSM: the direction's forward
        and backward pass). The measure then reads the misclassified inputs from it rather than evaluating every
        input a second time, and :meth:`run` gets its ``data`` for the others as ``clean=``. None (the default):
        the measure evaluates the inputs itself."""
        return None

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        *,
        bounds: Bounds,
        norm: Norm,
        eps_max: float,
        batch_size: int,
        progress: Progress | None = None,
    ) -> Found:
        """Search every input; ``inputs`` ``(N, *shape)`` lie in ``bounds`` and are classified ``labels`` ``(N,)``."""
