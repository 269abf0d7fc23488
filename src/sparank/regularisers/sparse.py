"""Regularisers of the sparse family (PROTOCOL §5): L1, proximal L1, magnitude pruning, group lasso, L0 gates.

Every method acts on the weight matrices and conv kernels that ``targets``
selects (never on biases) and, once ``finalise`` has run, leaves a plain
``nn.Module`` whose ``state_dict`` has the keys and shapes of
``build_model(spec)``: masks and gates are baked into ``weight`` and their
reparametrisations removed. Conv kernels ``(out, in, kh, kw)`` are viewed as
matrices ``(out, in·kh·kw)``: a *row* is one output neuron or one filter.

- ``l1``: loss + λ·Σ|w| (strength λ);
- ``prox_l1``: soft-threshold every weight by λ·step_size after each step (λ);
- ``magnitude``: after training, zero the fraction s of smallest |w| in each
  layer, then fine-tune with the mask fixed (s);
- ``magnitude_gradual``: prune to s gradually during training, on Zhu &
  Gupta's cubic schedule (s);
- ``group_lasso``: group soft-threshold of whole rows (neurons, filters) by
  λ·step_size·√(row size) after each step (λ);
- ``l0``: hard-concrete gates on every weight, loss + λ·(expected fraction of
  non-zero weights) (λ).

The proximal methods (``prox_l1``, ``group_lasso``) do not see the
optimiser, so the per-step threshold is ``λ·step_size`` with ``step_size`` a
keyword option (default 1e-3, the default Adam lr of ``TrainConfig``). With
plain SGD at learning rate ``step_size`` this is exactly proximal gradient
descent on ``loss + λ·Σ|w|`` (resp. the group-lasso term); with Adam it is
the same shrinkage per step, applied after Adam's (normalised) step. Adam
moves a weight by at most about its lr per step, so with Adam and
``step_size`` = lr the useful range is λ < 1: at λ ≥ 1 the threshold beats
every step and the layer collapses to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from sparank.models import weight_layers
from sparank.regularisers.base import Regulariser, check_int, check_positive

#: default per-step size of the proximal methods: TrainConfig's default Adam lr
DEFAULT_STEP_SIZE = 1e-3


# --------------------------------------------------------------------------- masks


def magnitude_mask(weight: Tensor, sparsity: float, *, pruned: Tensor | None = None) -> Tensor:
    """A 0/1 mask shaped like ``weight`` with exactly ``round(sparsity·n)`` zeros at the smallest ``|w|``.

    Args:
        weight: any shape, ``n`` elements.
        sparsity: fraction in ``[0, 1]`` of entries to zero.
        pruned: an earlier mask (same shape); its zeros are chosen first, so
            masks only grow (gradual pruning never revives a weight), as long
            as ``round(sparsity·n)`` is at least its number of zeros.

    Returns:
        float mask, same shape, dtype and device as ``weight``. Ties in ``|w|``
        (e.g. weights already exactly zero) are broken by ``torch.topk``, so the
        count of zeros in the mask is exact whatever the ties.
    """
    n = weight.numel()
    k = round(sparsity * n)
    score = weight.detach().abs().flatten().clone()
    if pruned is not None:
        score[pruned.flatten() == 0] = -1.0  # below every |w|: pruned first
    mask = torch.ones(n, dtype=weight.dtype, device=weight.device)
    if k > 0:
        mask[torch.topk(score, k, largest=False).indices] = 0.0
    return mask.view_as(weight)


def _fine_tune_with_masks(modules: dict[str, nn.Module], masks: dict[str, Tensor], fine_tune: Callable[[int], None], epochs: int) -> None:
    """Zero ``weight`` where ``masks`` is 0 and keep it zero while ``fine_tune(epochs)`` runs; leaves plain weights.

    The mask goes in through ``torch.nn.utils.prune.custom_from_mask`` (the
    effective weight is ``weight_orig * weight_mask``, so gradients cannot
    revive a pruned weight) and is baked in by ``prune.remove`` at the end.
    """
    for name, module in modules.items():
        prune.custom_from_mask(module, "weight", masks[name])
    if epochs > 0:
        fine_tune(epochs)
    for module in modules.values():
        prune.remove(module, "weight")


# --------------------------------------------------------------------------- l1


class L1(Regulariser):
    """Lasso penalty ``λ·Σ|w|`` over the touched weights, added to the batch loss (sub-gradient ``λ·sign(w)``).

    Shrinks weights towards zero but, trained by (sub-)gradient steps, rarely
    makes them exactly zero: measure its structure with the *effective*
    sparsity of PROTOCOL §4. ``prox_l1`` is the variant with exact zeros.
    Reference: Tibshirani 1996, https://doi.org/10.1111/j.2517-6161.1996.tb02080.x
    """

    name = "l1"
    summary = "penalty λ·Σ|w| added to the loss (shrinks; few exact zeros)"
    reference = "https://doi.org/10.1111/j.2517-6161.1996.tb02080.x"
    strength_meaning = "λ, the weight of Σ|w| (a sum, not a mean) in the loss"
    strength_range = (0.0, math.inf)
    default_strength = 1e-4

    def penalty(self, model: nn.Module) -> Tensor | None:
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        sums = [m.weight.abs().sum() for m in self.targets(model).values()]
        return self.strength * torch.stack(sums).sum() if sums else None


class ProxL1(Regulariser):
    """Proximal L1: after each optimiser step, ``w ← sign(w)·max(|w| − λ·step_size, 0)`` (soft-thresholding).

    The proximal operator of ``λ·step_size·Σ|w|``: weights whose step does not
    carry them past the threshold become *exactly* zero. With SGD at learning
    rate ``step_size`` this is proximal gradient descent (ISTA) on
    ``loss + λ·Σ|w|``, the same objective as ``l1``; with Adam (the default)
    the threshold per step is still ``λ·step_size``.
    Reference: Parikh & Boyd 2014, Proximal Algorithms, §6.5.2, https://web.stanford.edu/~boyd/papers/prox_algs.html

    Args:
        strength: λ.
        layers: qualified names of the touched layers (None: every weight layer).
        step_size: the step the threshold is scaled by; set it to the training
            lr when that is not the default 1e-3.
    """

    name = "prox_l1"
    summary = "soft-threshold |w| by λ·step_size after each step (exact zeros)"
    reference = "https://web.stanford.edu/~boyd/papers/prox_algs.html"
    strength_meaning = "λ, the L1 weight: each step shrinks |w| by λ·step_size"
    strength_range = (0.0, math.inf)
    default_strength = 0.3

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None, step_size: float = DEFAULT_STEP_SIZE) -> None:
        super().__init__(strength, layers=layers)
        self.step_size = check_positive("step_size", step_size)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        threshold = self.strength * self.step_size
        for module in self.targets(model).values():
            module.weight.copy_(F.softshrink(module.weight, threshold))


# --------------------------------------------------------------------------- magnitude pruning


class Magnitude(Regulariser):
    """One-shot magnitude pruning after training, then fine-tuning with the mask fixed.

    After the usual training, every touched layer loses its ``round(s·n)``
    smallest-magnitude weights (``n`` the layer's weight count): pruning is
    *per layer*, so every layer ends with the same sparsity s and no layer
    can be wiped out by the scale of another. The model is then fine-tuned
    for ``fine_tune_epochs`` with the pruned weights held at zero
    (``torch.nn.utils.prune``), and the mask baked in. Each layer ends with
    exactly ``round(s·n)`` zeros (more only if more were zero already).
    Reference: Han et al. 2015, https://arxiv.org/abs/1506.02626

    Args:
        strength: target sparsity s in [0, 1).
        layers: qualified names of the touched layers (None: every weight layer).
        fine_tune_epochs: epochs of fine-tuning after pruning (0: none).
    """

    name = "magnitude"
    summary = "after training, zero the fraction s of smallest |w| per layer, then fine-tune"
    reference = "https://arxiv.org/abs/1506.02626"
    strength_meaning = "s, the fraction of each layer's weights set to zero"
    strength_range = (0.0, 0.999)
    default_strength = 0.8

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None, fine_tune_epochs: int = 3) -> None:
        super().__init__(strength, layers=layers)
        self.fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=0)

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        return {**super().config(model), "scope": "per_layer"}

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        modules = self.targets(model)
        masks = {name: magnitude_mask(m.weight, self.strength) for name, m in modules.items()}
        _fine_tune_with_masks(modules, masks, fine_tune, self.fine_tune_epochs)


class MagnitudeGradual(Regulariser):
    """Gradual magnitude pruning during training (Zhu & Gupta 2017), per layer, to final sparsity s.

    With ``r = clip((progress − begin) / (end − begin), 0, 1)`` the fraction of
    the pruning window done, the target sparsity is the cubic schedule
    ``s_t = s·(1 − (1 − r)³)`` (Zhu & Gupta's ``s_f + (s_i − s_f)(1 − (t − t_0)/(nΔt))³``
    with ``s_i = 0``): fast pruning early, slow near the end. Every
    ``update_every`` optimiser steps (and at every step from ``end`` on) each
    layer's mask is grown to ``round(s_t·n)`` zeros at the smallest ``|w|``;
    a pruned weight stays pruned (the mask lives in ``torch.nn.utils.prune``,
    so gradients cannot revive it). Training after ``end`` recovers with the
    final mask; ``fine_tune_epochs`` more epochs are optional. Each layer
    ends with exactly ``round(s·n)`` zeros, even if training stopped early.
    Reference: https://arxiv.org/abs/1710.01878

    Args:
        strength: final sparsity s in [0, 1).
        layers: qualified names of the touched layers (None: every weight layer).
        begin: fraction of training at which pruning starts (t_0).
        end: fraction of training at which sparsity s is reached (t_0 + nΔt).
        update_every: optimiser steps between mask updates (Δt).
        fine_tune_epochs: epochs of fine-tuning with the final mask (0: none).
    """

    name = "magnitude_gradual"
    summary = "prune the smallest |w| per layer gradually during training (cubic schedule) to sparsity s"
    reference = "https://arxiv.org/abs/1710.01878"
    strength_meaning = "s, the final fraction of each layer's weights set to zero"
    strength_range = (0.0, 0.999)
    default_strength = 0.8

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        begin: float = 0.1,
        end: float = 0.7,
        update_every: int = 10,
        fine_tune_epochs: int = 0,
    ) -> None:
        super().__init__(strength, layers=layers)
        for label, value in (("begin", begin), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be a fraction of training in [0, 1], got {value!r}")
        if not begin < end:
            raise ValueError(f"begin must be < end (the pruning window), got begin={begin}, end={end}")
        self.begin = float(begin)
        self.end = float(end)
        self.update_every = check_int("update_every", update_every, low=1, hint="optimiser steps")
        self.fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=0)
        self._steps = 0
        self._applied = 0.0  # the sparsity the masks have now
        self._done = False  # set once training is over: fine-tuning steps leave the mask alone

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        return {**super().config(model), "scope": "per_layer"}

    def sparsity_at(self, progress: float) -> float:
        """The scheduled sparsity when the fraction ``progress`` of training is done."""
        r = min(max((progress - self.begin) / (self.end - self.begin), 0.0), 1.0)
        return self.strength * (1.0 - (1.0 - r) ** 3)

    def prepare(self, model: nn.Module) -> None:
        self._steps = 0
        self._applied = 0.0
        self._done = False
        for module in self.targets(model).values():
            prune.custom_from_mask(module, "weight", torch.ones_like(module.weight))

    @torch.no_grad()
    def _update_masks(self, model: nn.Module, sparsity: float) -> None:
        """Grow every layer's mask to ``round(sparsity·n)`` zeros (a no-op if the masks are there already)."""
        if sparsity <= self._applied:
            return
        for module in self.targets(model).values():
            mask = magnitude_mask(module.weight_orig, sparsity, pruned=module.weight_mask)
            module.weight_mask.copy_(mask)
        self._applied = sparsity

    def after_step(self, model: nn.Module, progress: float) -> None:
        if self._done:
            return
        self._steps += 1
        if self._steps % self.update_every == 0 or progress >= self.end:
            self._update_masks(model, self.sparsity_at(progress))

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        self._done = True
        self._update_masks(model, self.strength)  # a no-op unless training ended before `end`
        if self.fine_tune_epochs > 0:
            fine_tune(self.fine_tune_epochs)
        for module in self.targets(model).values():
            prune.remove(module, "weight")


# --------------------------------------------------------------------------- group lasso


GROUPINGS = ("incoming", "outgoing")


def _layer_pairs(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """Consecutive weight layers ``(name_a, a, b)`` where ``b`` reads ``a``'s units, in ``weight_layers`` order.

    sparank's models are ``nn.Sequential``: each weight layer feeds the next
    through an element-wise activation (and pooling / flattening), so unit
    ``i`` of ``a`` (row ``i``: a neuron or a filter) is read by the columns
    :func:`_outgoing` gives. Pairs whose shapes do not match that reading are
    left out.
    """
    layers = list(weight_layers(model).items())
    pairs = []
    for (name, a), (_, b) in zip(layers, layers[1:]):
        units, fan_in = a.weight.shape[0], b.weight.shape[1]
        if getattr(b, "groups", 1) == 1 and fan_in % units == 0:
            pairs.append((name, a, b))
    return pairs


def _outgoing(a: nn.Module, b: nn.Module) -> Tensor:
    """``b``'s weights that read each unit of ``a``, shaped ``(units of a, out of b, k)``: a view of ``b.weight``.

    Linear → Linear and conv → conv: column ``i`` (``b.weight[:, i]``). Conv →
    Linear after flattening: the block of ``b.in_features / channels`` columns
    of channel ``i`` (flatten is channel-major).
    """
    units = a.weight.shape[0]
    w = b.weight
    return w.reshape(w.shape[0], units, -1).transpose(0, 1)


def _unit_groups(weight: Tensor) -> Tensor:
    """``weight``'s *input* units' outgoing weights, ``(in, out·kh·kw)``: a column of a Linear, an input channel's slice of a conv."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1)


@torch.no_grad()
def remove_dead_units(model: nn.Module) -> dict[str, int]:
    """Make every dead hidden unit visibly removed; returns how many units each weight layer lost.

    A unit ``i`` of a weight layer (a neuron or a filter) is *dead* when its
    incoming weights and its bias are all zero (it outputs ReLU(0) = 0, and
    pooling keeps it 0), or when every weight reading it in the next layer is
    zero (its output is never used). Either way it has no effect on any
    logit; this zeroes both sides (its row, its bias and its outgoing
    weights), which changes no output. Only for element-wise activations with
    ``act(0) = 0`` between layers, as in sparank's ``mlp`` and ``cnn``.
    """
    removed: dict[str, int] = {}
    for name, a, b in _layer_pairs(model):
        rows = a.weight.flatten(1)
        silent = (rows == 0).all(dim=1)
        if a.bias is not None:
            silent &= a.bias == 0
        unread = (_outgoing(a, b) == 0).flatten(1).all(dim=1)
        keep = (~(silent | unread)).to(a.weight.dtype)  # multiplying (not indexing a reshape) always writes in place
        a.weight.mul_(keep.view(-1, *(1,) * (a.weight.dim() - 1)))
        if a.bias is not None:
            a.bias.mul_(keep)
        per_unit = b.weight.shape[1] // len(keep)
        b.weight.mul_(keep.repeat_interleave(per_unit).view(1, -1, *(1,) * (b.weight.dim() - 2)))
        removed[name] = int(len(keep) - keep.sum())
    return removed


def unit_counts(model: nn.Module) -> dict[str, int]:
    """Input features no weight reads (key ``"input"``) and, per hidden weight layer, its removed units.

    A removed unit has zero incoming weights, zero bias and zero outgoing
    weights (what :func:`remove_dead_units` leaves); an input feature is unused
    when the first weight layer's weights for it (a column, or an input
    channel of a conv) are all zero.
    """
    layers = list(weight_layers(model).values())
    counts = {"input": int((_unit_groups(layers[0].weight) == 0).all(dim=1).sum())} if layers else {}
    for name, a, b in _layer_pairs(model):
        rows = a.weight.flatten(1)
        bias_zero = (a.bias == 0) if a.bias is not None else torch.ones(rows.shape[0], dtype=torch.bool)
        gone = (rows == 0).all(dim=1) & bias_zero & (_outgoing(a, b) == 0).flatten(1).all(dim=1)
        counts[name] = int(gone.sum())
    return counts


class GroupLasso(Regulariser):
    """Group lasso by proximal steps, with one of two groupings of the parameters into units.

    The objective is ``loss + λ·Σ_g √size_g·‖w_g‖₂``; after each optimiser
    step every group is shrunk by its proximal operator,
    ``w_g ← w_g·max(0, 1 − λ·step_size·√size_g / ‖w_g‖₂)``, which sets whole
    groups *exactly* to zero (a sub-gradient penalty would only shrink them).
    No penalty is added to the loss: with SGD at learning rate ``step_size``
    this is exactly proximal gradient descent on the objective.

    ``groups="incoming"`` (default; PROTOCOL §5's "‖row‖₂ over neurons /
    filters"): one group per neuron or filter, its parameters θ_l^n = its
    incoming weights (a row of the weight matrix; a conv filter
    ``(in, kh, kw)``) *and its bias*, ``size = in·kh·kw + 1``, as in Alvarez
    & Salzmann 2016, "Learning the number of neurons in deep networks",
    https://arxiv.org/abs/1611.06321. A zero group outputs ReLU(0) = 0: the
    neuron is removed, not left as a constant. By default the output layer
    is left out (a zero row there deletes a class); a model whose only weight
    layer is its output layer (``linear``) raises ValueError unless
    ``layers`` names it.

    ``groups="outgoing"``: Scardapane et al. 2017, "Group sparse
    regularization for deep neural networks",
    https://arxiv.org/abs/1607.00485: one group per *unit*, its outgoing
    weights: an input feature's column of the first layer (input pixels are
    selected too), a hidden neuron's column of the next layer (a channel's
    slice ``(out, kh, kw)`` of a conv, or one flattened feature's column of a
    Linear after a conv), and one group per bias vector (the bias unit's
    outgoing weights), ``size`` the group's length. By default every weight
    layer is touched, the output layer included (its columns are the last
    hidden neurons' outgoing weights).

    ``finalise`` then calls :func:`remove_dead_units`: a unit that is silent
    (zero incoming weights and bias) or unread (zero outgoing weights) gets
    all three zeroed, which changes no logit; ``config(model)`` records the
    counts (:func:`unit_counts`: unused inputs and removed units per layer).

    Args:
        strength: λ.
        layers: qualified names of the touched layers (None: as above).
        groups: ``"incoming"`` (Alvarez & Salzmann) or ``"outgoing"`` (Scardapane et al.).
        step_size: the step the threshold is scaled by; set it to the training
            lr when that is not the default 1e-3.
    """

    name = "group_lasso"
    summary = "group soft-threshold per neuron (incoming weights + bias) or per unit (outgoing weights) after each step"
    reference = "https://arxiv.org/abs/1611.06321 (groups='incoming'), https://arxiv.org/abs/1607.00485 (groups='outgoing')"
    strength_meaning = "λ, the group-lasso weight: each step shrinks every group's norm ‖w_g‖₂ by λ·step_size·√(group size)"
    strength_range = (0.0, math.inf)
    default_strength = 0.3

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        groups: str = "incoming",
        step_size: float = DEFAULT_STEP_SIZE,
    ) -> None:
        super().__init__(strength, layers=layers)
        if groups not in GROUPINGS:
            raise ValueError(
                f"groups must be 'incoming' (each neuron's weights and bias, Alvarez & Salzmann) or "
                f"'outgoing' (each unit's outgoing weights and the biases, Scardapane et al.), got {groups!r}"
            )
        self.groups = groups
        self.step_size = check_positive("step_size", step_size)

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.layers is not None or self.groups == "outgoing":
            return super().targets(model)
        found = weight_layers(model)
        hidden = list(found)[:-1]  # the last weight layer is the output layer: its rows are classes
        if not hidden:
            raise ValueError(
                f"group_lasso zeros whole rows and leaves the output layer out by default, but this model's only weight layer is "
                f"its output layer; pass layers={list(found)} to group its rows (one per class) anyway"
            )
        return {name: found[name] for name in hidden}

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        record = super().config(model)
        if model is not None:
            record["units_removed"] = unit_counts(model)
        return record

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        if self.strength == 0.0:
            return
        shrink = self.strength * self.step_size
        for module in self.targets(model).values():
            if self.groups == "incoming":
                rows = module.weight.flatten(1)  # (out, in·kh·kw), a view
                if module.bias is None:
                    norms, size = rows.norm(dim=1), rows.shape[1]
                else:
                    norms, size = (rows.square().sum(dim=1) + module.bias.square()).sqrt(), rows.shape[1] + 1
                scale = (1.0 - shrink * math.sqrt(size) / norms).clamp(min=0.0)  # a zero group: 1 − inf → 0
                rows.mul_(scale[:, None])
                if module.bias is not None:
                    module.bias.mul_(scale)
            else:
                w = module.weight  # (out, in, ...): group j is w[:, j, ...]
                columns = w.transpose(0, 1).reshape(w.shape[1], -1)
                scale = (1.0 - shrink * math.sqrt(columns.shape[1]) / columns.norm(dim=1)).clamp(min=0.0)
                w.mul_(scale.view(1, -1, *(1,) * (w.dim() - 2)))
                if module.bias is not None:  # the bias unit's outgoing weights: one group
                    bias = module.bias
                    bias.mul_((1.0 - shrink * math.sqrt(bias.numel()) / bias.norm()).clamp(min=0.0))

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        remove_dead_units(model)


# --------------------------------------------------------------------------- L0 gates


class HardConcreteGate(nn.Module):
    """Parametrisation ``weight ↦ weight · z`` with a hard-concrete gate ``z ∈ [0, 1]`` per weight.

    Louizos, Welling & Kingma 2018, https://arxiv.org/abs/1712.01312, with
    β = 2/3, γ = −0.1, ζ = 1.1. In training mode each forward samples
    ``u ~ U(0, 1)``, ``s = σ((log u − log(1 − u) + log α)/β)`` and
    ``z = clamp(s·(ζ − γ) + γ, 0, 1)`` (exact 0 and 1 with positive
    probability); in eval mode the gate is deterministic,
    ``z = clamp(σ(log α)·(ζ − γ) + γ, 0, 1)``, exactly 0 when
    ``σ(log α) ≤ −γ/(ζ − γ) = 1/12``.

    ``log_alpha`` (same shape as the weight) is a plain tensor attribute, not
    an ``nn.Parameter``: the training loop's optimiser does not see it and no
    state-dict key is added; :class:`L0` trains it with its own optimiser.
    The noise ``u`` is drawn from ``generator`` (on its device, then moved to
    ``log_alpha``'s), or from the global RNG when it is None.
    """

    beta = 2.0 / 3.0
    gamma = -0.1
    zeta = 1.1

    def __init__(self, log_alpha: Tensor, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.log_alpha = log_alpha
        self.generator = generator

    def gate(self) -> Tensor:
        """The gate z, shaped like the weight: sampled in training mode, deterministic in eval mode."""
        if self.training:
            if self.generator is None:
                u = torch.rand_like(self.log_alpha)
            else:
                u = torch.rand(self.log_alpha.shape, generator=self.generator, dtype=self.log_alpha.dtype, device=self.generator.device)
                u = u.to(self.log_alpha.device)
            u = u.clamp(1e-6, 1.0 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.gate()

    def prob_nonzero(self) -> Tensor:
        """P(z ≠ 0) per weight, ``σ(log α − β·log(−γ/ζ))``: the expected L0 norm is its sum."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))


class L0(Regulariser):
    """L0 regularisation with hard-concrete gates on every touched weight (Louizos, Welling & Kingma 2018).

    ``prepare`` reparametrises each touched ``weight`` as ``weight · z``
    (:class:`HardConcreteGate`, via ``torch.nn.utils.parametrize``), with
    ``log α`` initialised to ``init_log_alpha`` (gates open: at the default 2.0
    the deterministic gate is 0.96). The loss gets
    ``λ · (Σ_j P(z_j ≠ 0)) / n``, λ times the expected fraction of non-zero
    weights among the ``n`` touched ones; dividing by ``n`` (rather than by the
    training-set size, as the paper does) makes λ mean the same on every
    architecture: the share of loss (in nats) traded to close every gate.

    The gates' ``log α`` are trained by this regulariser's own Adam at
    ``gate_lr`` (after each of the loop's steps): with the loop's lr of 1e-3
    and a few hundred steps on digits, ``log α`` could move by well under the
    ~4 units that close a gate. ``finalise`` switches to the deterministic
    gates, bakes ``weight · z`` into a plain ``weight`` (exact zeros where
    ``z = 0``) and removes the parametrisation; ``fine_tune_epochs > 0`` then
    fine-tunes with those zeros held fixed.

    Args:
        strength: λ.
        layers: qualified names of the touched layers (None: every weight layer).
        gate_lr: Adam learning rate of the gates' log α.
        init_log_alpha: the initial log α of every gate.
        fine_tune_epochs: epochs of fine-tuning with the zeros fixed (0: none).
    """

    name = "l0"
    summary = "hard-concrete gates on every weight; penalty λ·(expected fraction of non-zero weights)"
    reference = "https://arxiv.org/abs/1712.01312"
    strength_meaning = "λ, the weight of the expected fraction of non-zero weights in the loss"
    strength_range = (0.0, math.inf)
    default_strength = 1.0

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        gate_lr: float = 0.05,
        init_log_alpha: float = 2.0,
        fine_tune_epochs: int = 0,
    ) -> None:
        super().__init__(strength, layers=layers)
        self.gate_lr = check_positive("gate_lr", gate_lr)
        if isinstance(init_log_alpha, bool) or not isinstance(init_log_alpha, (int, float)) or not math.isfinite(init_log_alpha):
            raise ValueError(f"init_log_alpha must be a finite number (e.g. 2.0: gates open), got {init_log_alpha!r}")
        self.init_log_alpha = float(init_log_alpha)
        self.fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=0)
        self._gates: dict[str, HardConcreteGate] = {}
        self._gate_optimizer: torch.optim.Optimizer | None = None

    def prepare(self, model: nn.Module) -> None:
        self._gates = {}
        for name, module in self.targets(model).items():
            log_alpha = torch.full_like(module.weight, self.init_log_alpha, requires_grad=True)
            self._gates[name] = HardConcreteGate(log_alpha, self.generator)  # the run's generator (set by the loop)
            parametrize.register_parametrization(module, "weight", self._gates[name])
        # fused: one pass over the ~10⁵–10⁶ gates instead of a dozen (the same Adam update)
        self._gate_optimizer = torch.optim.Adam([g.log_alpha for g in self._gates.values()], lr=self.gate_lr, fused=True)

    def penalty(self, model: nn.Module) -> Tensor:
        expected = sum(g.prob_nonzero().sum() for g in self._gates.values())
        count = sum(g.log_alpha.numel() for g in self._gates.values())
        return self.strength * expected / max(count, 1)

    def after_step(self, model: nn.Module, progress: float) -> None:
        if self._gate_optimizer is None:  # fine-tuning, after the gates are baked in
            return
        self._gate_optimizer.step()
        self._gate_optimizer.zero_grad(set_to_none=True)

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        modules = self.targets(model)
        for name, module in modules.items():
            self._gates[name].eval()
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self._gates = {}
        self._gate_optimizer = None
        if self.fine_tune_epochs > 0:
            masks = {name: (m.weight.detach() != 0).to(m.weight.dtype) for name, m in modules.items()}
            _fine_tune_with_masks(modules, masks, fine_tune, self.fine_tune_epochs)


#: the classes this module registers, in the order `sparank regularisers` lists them
METHODS: tuple[type[Regulariser], ...] = (L1, ProxL1, Magnitude, MagnitudeGradual, GroupLasso, L0)
