"""DeepFool: the minimal perturbation by successive linearisation of the decision boundaries (PROTOCOL §3).

Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method
to fool deep neural networks", CVPR 2016, https://arxiv.org/abs/1511.04599.

At an iterate ``x_i`` still classified ``y``, each candidate class ``k``
gives a linearised boundary ``f'_k + w'_k · r = 0`` with ``f'_k = f_k(x_i) −
f_y(x_i)`` (logits, not softmax) and ``w'_k = ∇_x f'_k(x_i)``. Its distance
in the attack's norm is ``|f'_k| / ||w'_k||_q`` (``q`` the dual norm: 2 for
L2, 1 for L∞); the closest one, ``l``, gives the step (paper §3.3)

- L2: ``r_i = |f'_l| / ||w'_l||_2² · w'_l``;
- L∞: ``r_i = |f'_l| / ||w'_l||_1 · sign(w'_l)``,

which lands exactly on that linearised boundary. The iterate is
``x_{i+1} = x_0 + (1 + overshoot) · Σ_{j<=i} r_j``, so the final perturbation
is ``(1 + overshoot) · Σ r_j`` (the paper's code and Foolbox alike), and each
input stops as soon as its iterate is misclassified. For an affine model the
first step with ``overshoot = 0`` is the exact minimal perturbation
(:func:`sparank.linear.unboxed_minimal_perturbation`). The paper has no box;
how this one handles it is in :class:`DeepFool`.

:func:`rho_adv` is the paper's robustness measure ``ρ_adv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor, nn

from sparank.attacks.base import (
    Bounds,
    Found,
    MinimalAttack,
    Norm,
    Progress,
    Status,
    _check_finite,
    as_tensor,
    check_refine,
    distances,
    logits_of,
)

if TYPE_CHECKING:
    from sparank.robustness import RobustnessResult


@dataclass(frozen=True, kw_only=True)
class DeepFool(MinimalAttack):
    """DeepFool's minimal perturbation in L2 or L∞ (Moosavi-Dezfooli et al. 2016, https://arxiv.org/abs/1511.04599).

    Multiclass DeepFool (the paper's Algorithm 2, in its ℓp form of §3.3): at
    each step the differences ``f_k − f_y`` of the logits for the candidate
    classes are linearised, the iterate moves onto the closest linearised
    boundary, and the steps accumulate; the iterate is
    ``x_0 + (1 + overshoot) · Σ r_i``. An input stops as soon as its iterate
    is misclassified (``argmax != y``, ties to the lowest class index); its
    adversarial is that iterate and its claimed radius ``eps`` its float64
    distance from the input. DeepFool is a heuristic: the distance is an
    upper bound on the minimal perturbation, exact for an affine model with
    ``overshoot = 0`` (one step), and ``(1 + overshoot)`` times the optimum
    for a binary affine one.

    **The box.** The paper has no box. The iterate is clipped to ``bounds``
    after every step, ``clip(x_0 + (1 + overshoot)·Σ r_i)``, as Foolbox does
    (``Σ r_i`` itself is not clipped, as in Foolbox), and the next linearisation
    is taken at the clipped point, so the adversarial always lies in the box.
    Clipping alone stalls where the box binds: on digits in [0, 1] most of
    each step pushes pixels that are already 0 below 0, the clip removes it,
    and the iterate creeps towards the boundary by a fixed fraction per step
    without crossing it (17-19 % of the digits MLP's test inputs were not
    fooled in 50 steps, in L2 and L∞; Foolbox gets across by adding 1e-4 to
    every step, and lands just past the boundary: the clip has eaten its overshoot).
    So by default (``box="face"``) the linearisation is also restricted to
    the directions the box allows: at each step a coordinate that sits on a
    bound is left out of ``w'_k`` (for every candidate ``k``) where ``w'_k``
    points out of the box there. The step is then the smallest one onto the
    linearised boundary that does not push a bound coordinate out (exact
    for an affine model as long as the step moves no other coordinate past
    a bound), every test input of the digits MLP is fooled within 5 steps,
    and the overshoot applies as in the paper (distances about 2 % above
    Foolbox's on the inputs both fool). ``box="clip"`` is the clip alone
    (Foolbox's DeepFool without its 1e-4: within 0.5 % of its distances on 90 % of the inputs both fool).
    For a box wide enough not to bind, both are the paper's algorithm.

    Settings:
        steps: the most linearisation steps per input (the paper's iterations; it
            usually needs 2-4 on trained networks).
        candidates: how many classes to consider: the top ``candidates`` by clean logit,
            the true class among them (run only sees correctly classified inputs, so
            ``y`` is the first); ``candidates − 1`` gradient differences per step.
            Capped at the number of classes; ``None`` means every class.
        overshoot: the paper's 0.02: the final perturbation is ``(1 + overshoot)·Σ r_i``,
            so that a step onto a linearised boundary lands past it. With 0 an iterate
            can land on the boundary itself, where a tie with a higher-index class is
            still ``y``; the next linearised step is then 0 and the input stops, not found.
        box: ``"face"`` (default) or ``"clip"``: how the box enters the step (above).

    Inputs whose every candidate gradient difference is exactly zero at the
    clean input are ``no_direction`` (the attack cannot move). An input that
    later cannot move (every difference zero, or zero once restricted to the
    box's face, or a zero step at a tie) stops and is not found.
    ``eps_lo`` is 0: DeepFool tries no radius below the one it returns, and
    ``adversarials`` holds each input's last iterate (found or not).
    Gradients are taken with :func:`torch.autograd.grad` on a detached copy
    of the inputs (one backward pass per candidate, on one forward pass), so
    neither the inputs nor any parameter's ``.grad`` change.
    ``forward_rows`` counts, per step, one row per active input for the check
    (a forward pass without gradients) and one per candidate gradient (a
    forward and backward, as FGSM's direction counts) for those still correct.
    """

    name: ClassVar[str] = "deepfool"
    steps: int = 50  # the paper's loop bound (Foolbox's default); trained networks need a few
    candidates: int | None = 10  # top classes by clean logit (Foolbox's default): all of them for 10 classes
    overshoot: float = 0.02  # the paper's value
    box: Literal["face", "clip"] = "face"  # leave bound coordinates pushed outwards out of the step (clip alone stalls)
    refine: int = 0  # bisections along x → x_adv (0: the paper's (1 + overshoot)·Σ r, as ρ_adv needs)

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.candidates is not None and not (
            isinstance(self.candidates, int) and not isinstance(self.candidates, bool) and self.candidates >= 2
        ):
            raise ValueError(
                f"candidates must be an integer >= 2 (the true class and at least one other) or None for all, got {self.candidates!r}"
            )
        if not (isinstance(self.overshoot, int | float) and not isinstance(self.overshoot, bool) and 0 <= self.overshoot < math.inf):
            raise ValueError(f"overshoot must be a finite number >= 0 (the paper uses 0.02), got {self.overshoot!r}")
        check_refine(self.refine)
        if self.box not in ("face", "clip"):
            raise ValueError(f"box must be 'face' (restrict the step to the box's face) or 'clip' (clip only), got {self.box!r}")

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
        n = len(inputs)
        device = inputs.device
        adversarials = inputs.detach().clone()
        found = torch.zeros(n, dtype=torch.bool, device=device)
        no_direction = torch.zeros(n, dtype=torch.bool, device=device)
        rows = 0
        done = 0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            adv, fnd, nodir, r, finished = self._batch(
                model, inputs[start:stop].detach(), labels[start:stop], start, bounds, norm, progress, done, n
            )
            adversarials[start:stop] = adv
            found[start:stop] = fnd
            no_direction[start:stop] = nodir
            rows += r
            done = finished
        if progress is not None and n:
            progress(n, n)
        dist = distances(adversarials, inputs, norm)
        return Found(
            adversarials=adversarials,
            found=found,
            eps=torch.where(found, dist, math.inf),
            eps_lo=torch.zeros(n, dtype=torch.float64, device=device),
            no_direction=no_direction,
            forward_rows=rows,
        )

    def _batch(
        self,
        model: nn.Module,
        x0: Tensor,
        y: Tensor,
        offset: int,
        bounds: Bounds,
        norm: Norm,
        progress: Progress | None,
        done: int,
        total: int,
    ) -> tuple[Tensor, Tensor, Tensor, int, int]:
        """DeepFool on one batch ``x0`` ``(B, *shape)``: (last iterates, found, no_direction, rows, inputs finished so far)."""
        b = len(x0)
        device = x0.device
        x = x0.clone()
        p_total = torch.zeros(x0.shape, dtype=torch.float64, device=device)  # Σ r_i, accumulated in float64
        found = torch.zeros(b, dtype=torch.bool, device=device)
        no_direction = torch.zeros(b, dtype=torch.bool, device=device)
        active = torch.arange(b, device=device)
        owners_all = torch.arange(offset, offset + b, device=device)
        rows = 0
        classes: Tensor | None = None  # (B, C−1): the candidate classes other than y, by clean logit
        for step in range(self.steps + 1):
            # the check: which iterates are misclassified (a forward pass without gradients)
            with torch.no_grad():
                logits = logits_of(model, x[active], y[active])
            _check_finite(logits, owners_all[active], "logits")
            rows += len(active)
            if classes is None:  # step 0: every input of the batch is active
                k = logits.shape[1] if self.candidates is None else min(self.candidates, logits.shape[1])
                others = logits.scatter(1, y[:, None], -math.inf)
                classes = others.argsort(dim=1, descending=True, stable=True)[:, : k - 1]
            wrong = logits.argmax(dim=1) != y[active]
            found[active[wrong]] = True
            finished = int(wrong.sum())
            active = active[~wrong]
            if step == self.steps:  # out of steps: the rest are not found
                finished += len(active)
            if finished and progress is not None:
                done += finished
                progress(done, total)
            if step == self.steps or not len(active):
                break
            # the linearisation at the iterates still classified y: f'_k and w'_k for the candidates
            xa = x[active].detach().clone().requires_grad_(True)
            ya, cand, owners = y[active], classes[active], owners_all[active]
            with torch.enable_grad():
                logits = logits_of(model, xa, ya)
                diff = logits.gather(1, cand) - logits.gather(1, ya[:, None])  # f'_k = f_k − f_y, (A, C−1)
                grads = [
                    torch.autograd.grad(diff[:, j].sum(), xa, retain_graph=j + 1 < cand.shape[1])[0].detach().flatten(1)
                    for j in range(cand.shape[1])
                ]
            rows += len(active) * cand.shape[1]
            w = torch.stack(grads, dim=1).double()  # w'_k, (A, C−1, D)
            _check_finite(w, owners, "input gradients")
            if step == 0:  # every candidate gradient difference is exactly 0
                no_direction[active[(w == 0).flatten(1).all(dim=1)]] = True
            if self.box == "face":  # a coordinate on a bound cannot move outwards: leave it out of the linearisation
                xf = xa.detach().flatten(1)[:, None, :]
                w = torch.where(((xf <= bounds.lo) & (w < 0)) | ((xf >= bounds.hi) & (w > 0)), 0.0, w)
            f = diff.detach().double()
            dual = w.abs().sum(dim=2) if norm == "linf" else w.norm(dim=2)  # ||w'_k||_q
            dist = torch.where(dual > 0, f.abs() / torch.where(dual > 0, dual, 1.0), math.inf)
            best_dist, best = dist.min(dim=1)
            flat = (dual == 0).all(dim=1)  # no candidate can be moved towards
            w_l = w[torch.arange(len(active), device=device), best]  # (A, D)
            if norm == "linf":
                r = best_dist[:, None] * w_l.sign()
            else:
                dual_l = dual.gather(1, best[:, None])
                r = (best_dist[:, None] / torch.where(dual_l > 0, dual_l, 1.0)) * w_l
            moving = ~flat & (best_dist > 0)  # the others cannot move: they stop, not found
            if progress is not None and not bool(moving.all()):
                done += int((~moving).sum())
                progress(done, total)
            idx = active[moving]
            p_total[idx] += r[moving].view((-1,) + x0.shape[1:])
            # clamped in the inputs' dtype, as every attack here does (a double clamp can round past the box)
            x[idx] = (x0[idx].double() + (1.0 + self.overshoot) * p_total[idx]).to(x0.dtype).clamp_(bounds.lo, bounds.hi)
            active = idx
        return x, found, no_direction, rows, done


def rho_adv(result: RobustnessResult, inputs: Tensor) -> float:
    """The paper's robustness measure ``ρ_adv = mean ||r(x)|| / ||x||`` over the inputs the attack fooled.

    Moosavi-Dezfooli et al. 2016 (https://arxiv.org/abs/1511.04599), eq. (15):
    ``ρ_adv(f) = (1/|D|) Σ_{x∈D} ||r(x)||_p / ||x||_p``, here in the result's
    norm (``||·||_2`` or ``||·||_∞``), ``||r(x)||`` the verified adversarial's
    distance ``result.distance`` (``||x_adv − x||``, not the claimed radius).

    Which inputs count: only those with status ``FOOLED``. Clean-wrong inputs are
    excluded (their ``r`` is not DeepFool's minimal perturbation: counting them as
    0 would pull ``ρ_adv`` down, the mistake of torchattacks issue #51), and so are
    censored and no-direction ones (no adversarial within ``eps_max``: there is
    no ``||r||`` to average). The value is therefore conditional on being fooled:
    report it beside the count of excluded inputs, e.g. ``result.summary()``'s
    ``censored_fraction`` and ``no_direction_fraction`` (0 for DeepFool with a
    large ``eps_max`` on a model without masking).

    Args:
        result: a :class:`~sparank.robustness.RobustnessResult` of ``N`` inputs (any
            attack; DeepFool's for the paper's measure), with ``distance``.
        inputs: ``(N, *shape)``: the inputs it was measured on, in the same order.

    Returns:
        ``ρ_adv`` as a float; ``nan`` if no input was fooled.

    Raises:
        ValueError: ``inputs`` do not match the result's length, the result has no
            distances, or a fooled input is 0 (``||x|| = 0``: ``ρ_adv`` undefined).
    """
    x = as_tensor(inputs, "inputs")
    if x.ndim < 1 or len(x) != len(result):
        raise ValueError(f"inputs must be the result's {len(result)} inputs shaped (N, ...), got shape {tuple(x.shape)}")
    if result.distance is None:
        raise ValueError("the result has no distances (result.distance is None): measure it with sparank.robustness.measure")
    fooled = result.status == int(Status.FOOLED)
    if not bool(fooled.any()):
        return math.nan
    xf = x[fooled.to(x.device)].detach().double().flatten(1)
    size = (xf.abs().amax(dim=1) if result.norm == "linf" else xf.norm(dim=1)).cpu()
    if bool((size == 0).any()):
        i = int(torch.nonzero(fooled).squeeze(1)[size == 0][0])
        raise ValueError(f"input {i} is all zeros (||x|| = 0): rho_adv = ||r||/||x|| is undefined for it; leave it out")
    return float((result.distance[fooled].double() / size).mean())
