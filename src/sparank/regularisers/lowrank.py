"""Low-rank regularisers (PROTOCOL §5): ``nuclear``, ``svt``, ``factorised``, ``svd_truncate``.

Every rank operation views a weight as a matrix ``(out, in·kh·kw)`` (a conv
kernel ``(out, in, kh, kw)`` is flattened over its last three axes); biases
are never touched. Two of the methods shrink the singular values during
training (``nuclear`` as a penalty, ``svt`` as a proximal step); the other two
hold the rank fixed with the parametrisation ``W = U Vᵀ`` of
:class:`LowRank` (``factorised`` for the whole of training, ``svd_truncate``
for a fine-tune after a truncation). Every method leaves a plain
``nn.Module`` whose ``state_dict`` loads into ``build_model(spec)``.

A full SVD per optimiser step costs more than the step itself for the
FC-300-100 net (about 12 ms against 1 ms on two CPU cores for the 300x784
matrix), so ``nuclear`` and ``svt`` get their ``U f(σ) Vᵀ`` from the
eigendecomposition of the smaller Gram matrix (:func:`spectral_map`, about
3x cheaper) and only every ``every`` steps (see each class for what that
changes).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from sparank.regularisers.base import Regulariser, check_int, check_positive


def as_matrix(weight: Tensor) -> Tensor:
    """``weight`` viewed as a matrix ``(out, in·kh·kw)`` (a view of a contiguous weight); a Linear weight is unchanged."""
    return weight.reshape(weight.shape[0], -1)


def target_rank(shape: Sequence[int], fraction: float) -> int:
    """``ceil(fraction · min(out, in·kh·kw))`` for a weight of ``shape``, at least 1."""
    out, fan_in = shape[0], math.prod(shape[1:])
    return max(1, math.ceil(fraction * min(out, fan_in)))


def spectral_map(weight: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``U · diag(fn(σ)) · Vᵀ`` for the thin SVD ``W = U Σ Vᵀ`` of ``weight`` seen as a matrix, reshaped to ``weight.shape``.

    Computed from the eigendecomposition ``Q Λ Qᵀ`` of the smaller Gram
    matrix (``W Wᵀ`` when ``out ≤ in``, else ``WᵀW``) as
    ``Q · diag(fn(σ)/σ) · Qᵀ W`` with ``σ = √Λ`` (or ``W Q · diag(fn(σ)/σ) · Qᵀ``):
    about 3x faster than ``torch.linalg.svd`` on CPU for the 300x784 layer of
    the FC-300-100 net, and agreeing with it to ~1e-7. Squaring loses the
    singular values below ``√eps · σ_1`` (3.5e-4·σ_1 in float32): those
    directions are treated as exact zeros (mapped to 0). ``fn`` maps a
    vector of singular values to a vector of the same shape.
    """
    m = as_matrix(weight)
    wide = m.shape[0] <= m.shape[1]
    eigenvalues, q = torch.linalg.eigh(m @ m.T if wide else m.T @ m)
    sigma = eigenvalues.clamp(min=0.0).sqrt()
    resolved = sigma > math.sqrt(torch.finfo(m.dtype).eps) * sigma.max()
    ratio = torch.where(resolved, fn(sigma) / torch.where(resolved, sigma, 1.0), 0.0)
    out = (q * ratio) @ (q.T @ m) if wide else ((m @ q) * ratio) @ q.T
    return out.reshape(weight.shape)


def singular_value_threshold(weight: Tensor, threshold: float) -> Tensor:
    """``U · max(σ − threshold, 0) · Vᵀ`` of ``weight`` seen as a matrix, reshaped back to ``weight.shape``.

    The proximal operator of ``threshold · ||W||_*`` (Cai, Candès & Shen 2010,
    https://arxiv.org/abs/0810.3286), computed with :func:`spectral_map`.
    """
    return spectral_map(weight, lambda sigma: torch.clamp(sigma - threshold, min=0.0))


def polar_factor(weight: Tensor) -> Tensor:
    """``U Vᵀ`` of ``weight`` seen as a matrix (reshaped to ``weight.shape``): a sub-gradient of ``||W||_*``.

    Computed with :func:`spectral_map`, so directions with ``σ ≤ √eps · σ_1``
    get 0 (the minimum-norm choice on the numerical null space).
    """
    return spectral_map(weight, torch.ones_like)


class LowRank(nn.Module):
    """The parametrisation ``W = (U Vᵀ).reshape(shape)``, ``U: (out, r)``, ``V: (in·kh·kw, r)``.

    For ``torch.nn.utils.parametrize.register_parametrization(module,
    "weight", LowRank(shape, r))``: registering calls :meth:`right_inverse`
    on the current weight, which stores its best rank-``r`` approximation
    (truncated SVD, Eckart–Young) as the balanced factors ``U = U_r √σ``,
    ``V = V_r √σ`` (the "spectral initialisation" of Khodak et al. 2021,
    https://arxiv.org/abs/2105.01029). The module then trains ``U`` and ``V``
    (``parametrizations.weight.original0`` / ``original1``) and every forward
    pass sees a weight of rank at most ``r``.
    """

    def __init__(self, shape: Sequence[int], rank: int) -> None:
        super().__init__()
        out, fan_in = shape[0], math.prod(shape[1:])
        if not 1 <= rank <= min(out, fan_in):
            raise ValueError(f"rank must be in [1, {min(out, fan_in)}] for a weight shaped {tuple(shape)}, got {rank}")
        self.shape = tuple(shape)
        self.rank = rank

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return (u @ v.T).reshape(self.shape)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        u, s, vh = torch.linalg.svd(as_matrix(weight.detach()), full_matrices=False)
        root = s[: self.rank].sqrt()
        return (u[:, : self.rank] * root).contiguous(), (vh[: self.rank].T * root).contiguous()

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rank={self.rank}"


def factorise(module: nn.Module, rank: int) -> nn.Module:
    """Parametrise ``module.weight`` as ``U Vᵀ`` of rank ``rank``, starting from its best rank-``rank`` approximation; returns ``module``.

    The module's forward pass is replaced by :func:`two_factor_forward`, which
    applies ``V`` and then ``U`` and never forms ``U Vᵀ``; reading
    ``module.weight`` still gives the dense ``U Vᵀ``.
    """
    parametrize.register_parametrization(module, "weight", LowRank(module.weight.shape, rank))
    module.forward = types.MethodType(two_factor_forward, module)  # an instance attribute: shadows the class's forward
    return module


def two_factor_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The output of a module factorised by :func:`factorise`, computed as two thin maps: ``x → x V → (x V) Uᵀ + b``.

    Linear: ``x (..., in)`` → ``(..., r)`` → ``(..., out)``, costing
    ``batch·r·(in+out)`` multiply-adds instead of ``out·r·in`` (forming
    ``U Vᵀ``) plus ``batch·out·in``. Conv: a conv with ``r`` filters of the
    full kernel (``Vᵀ`` reshaped to ``(r, in, kh, kw)``, the layer's stride,
    padding and dilation), then a 1x1 conv with ``U`` reshaped to
    ``(out, r, 1, 1)`` and the bias. The same function as ``module``
    with the weight ``U Vᵀ``, up to float rounding. A grouped conv uses the
    dense weight (its ``U Vᵀ`` does not split into per-group factors).
    """
    u = module.parametrizations.weight.original0  # (out, r)
    v = module.parametrizations.weight.original1  # (in·kh·kw, r)
    if isinstance(module, nn.Linear):
        return F.linear(x @ v, u, module.bias)
    if module.groups != 1:
        return type(module).forward(module, x)  # the parametrised class's forward: reads the dense module.weight
    shape = module.parametrizations.weight[0].shape  # the LowRank's (out, in, kh, kw), read without forming U Vᵀ
    kernel = v.T.reshape(v.shape[1], *shape[1:])  # (r, in, kh, kw)
    hidden = module._conv_forward(x, kernel, None)  # conv's own padding (any padding_mode), stride and dilation
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(module.kernel_size)]
    return conv(hidden, u.reshape(*u.shape, *(1,) * len(module.kernel_size)), module.bias)


def bake(module: nn.Module) -> nn.Module:
    """Remove the parametrisation of ``module.weight``, keeping its current value as a plain Parameter; returns ``module``.

    The module's own forward pass is restored, and the state-dict order of
    ``build_model`` (weight, then bias), so the baked model's ``state_dict``
    lists the same keys in the same order.
    """
    if "forward" in vars(module):
        del module.forward  # the class's forward again (set by factorise)
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    bias = module.bias
    if bias is not None:  # re-register the bias so that it comes after the weight again
        del module.bias
        module.bias = bias
    return module


class Nuclear(Regulariser):
    """Nuclear-norm penalty ``λ · Σ_layers Σ_i σ_i(W)``, the convex surrogate of rank.

    Recht, Fazel & Parrilo 2010, https://arxiv.org/abs/0706.4138. Its
    sub-gradient is ``λ U Vᵀ`` (from the thin SVD ``W = U Σ Vᵀ``;
    :func:`polar_factor`). The penalty is computed as ``λ · Σ <W, G>`` with
    ``G = U Vᵀ`` held fixed (no gradient through it): its gradient is exactly
    ``λ G`` and, when ``G`` is fresh, its value is exactly ``λ ||W||_*``.

    One decomposition per layer per step costs about 5x a plain step for
    FC-300-100 on two CPU cores, so ``G`` is refreshed every ``every``
    penalised steps and reused in between, *except* in the last
    ``exact_steps`` steps of training, which take the exact sub-gradient at
    every step. A stale ``G`` keeps pushing a singular value that has reached
    zero past it, so the small singular values oscillate with an amplitude of
    about ``every`` steps and never come near zero (digits, ``mlp:64``,
    λ=1e-2, 20 epochs: fc1 numerical rank 62 of 64 with ``every=32`` alone,
    40 with ``every=2``); the exact end-game lets them settle: with the
    defaults (``every=32``, ``exact_steps=128``) fc1 ends at numerical rank
    23 and effective rank 12.2, as with ``every=1`` (23 and 12.1; dense: 63
    and 40.4), and 11 / 8.6 for both at 40 epochs. The end-game costs
    ``exact_steps`` decompositions once per run (about 0.03x per epoch of a
    20-epoch Fashion-MNIST run). ``every=1`` is the exact sub-gradient
    method throughout; ``exact_steps=0`` the stale one throughout. While
    ``G`` is stale the logged penalty is a lower bound of ``λ ||W||_*``
    (``<W, G> ≤ ||W||_*`` since ``||G||_2 ≤ 1``).

    The number of training steps is read from the loop's first
    ``after_step`` call (``progress = 1 / total``).

    Args:
        strength: λ.
        layers: qualified names of the touched layers (None: every weight layer).
        every: penalised steps between two refreshes of ``G`` (1: every step).
        exact_steps: the last training steps that refresh ``G`` at every step.
    """

    name = "nuclear"
    summary = "nuclear-norm penalty λ·Σσ(W) (sub-gradient U Vᵀ)"
    reference = "https://arxiv.org/abs/0706.4138"
    strength_meaning = "λ, the coefficient of the nuclear-norm penalty λ·Σσ(W)"
    strength_range = (0.0, math.inf)
    default_strength = 1e-3

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None, every: int = 32, exact_steps: int = 128) -> None:
        super().__init__(strength, layers=layers)
        self.every = check_int("every", every, low=1)
        self.exact_steps = check_int("exact_steps", exact_steps, low=0, hint="the last training steps with the exact sub-gradient")
        self._calls = 0
        self._total: int | None = None
        self._subgradients: dict[str, Tensor] = {}

    def prepare(self, model: nn.Module) -> None:
        self._calls = 0
        self._total = None
        self._subgradients = {}

    def after_step(self, model: nn.Module, progress: float) -> None:
        if self._total is None and progress > 0:
            self._total = round(1.0 / progress)  # the first step: progress = 1 / (training steps)

    def exact(self) -> bool:
        """Whether the next penalised step is in the exact end-game (the last ``exact_steps`` steps)."""
        return self._total is not None and self._calls >= self._total - self.exact_steps

    def penalty(self, model: nn.Module) -> Tensor | None:
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        layers = self.targets(model)
        if not layers or self.strength == 0.0:
            return None
        if self._calls % self.every == 0 or self.exact():
            with torch.no_grad():
                for name, module in layers.items():
                    self._subgradients[name] = as_matrix(polar_factor(module.weight))
        self._calls += 1
        terms = [(as_matrix(m.weight) * self._subgradients[n]).sum() for n, m in layers.items()]
        return self.strength * torch.stack(terms).sum()


class SVT(Regulariser):
    """Singular-value soft-thresholding after the optimiser step: ``W ← U · max(σ − t, 0) · Vᵀ``.

    The proximal step of ``λ ||W||_*`` (Cai, Candès & Shen 2010,
    https://arxiv.org/abs/0810.3286), which sets small singular values to
    exactly zero: ``t = λ · step_size`` per optimiser step. ``step_size``
    stands for the gradient step the proximal operator pairs with (the
    default 1e-3 is Adam's learning rate in ``TrainConfig``); with adaptive
    optimisers there is no single step size, so it is a documented knob.

    ``every=k`` thresholds once every ``k`` steps by ``k · t`` instead of
    every step by ``t`` (``k`` thresholds by ``t`` with no steps in between
    equal one by ``k·t``): the total shrinkage is the same, but between two
    thresholds the weights drift off the low-rank set and a singular value
    reaches zero only at a threshold. The last training step always
    thresholds (by ``t`` times the steps since the previous one), so the
    trained weights are the output of a proximal step. ``every=1`` is the
    exact proximal-gradient method. Measured on digits (FC-64, λ=1, 20
    epochs), ``every`` = 1, 16 or 32 give the same accuracy (0.933), FGSM
    AUC and fc1 ranks (numerical 38, effective 20.0) to three digits; the
    default 16 costs about 1.4x a plain step for FC-300-100 on two CPU cores.
    """

    name = "svt"
    summary = "singular-value soft-thresholding W ← U·max(σ − λ·step_size, 0)·Vᵀ after optimiser steps"
    reference = "https://arxiv.org/abs/0810.3286"
    strength_meaning = "λ, the nuclear-norm weight of the proximal step (threshold λ·step_size per optimiser step)"
    strength_range = (0.0, math.inf)
    default_strength = 1.0

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        step_size: float = 1e-3,
        every: int = 16,
    ) -> None:
        super().__init__(strength, layers=layers)
        self.step_size = check_positive("step_size", step_size, hint="e.g. the learning rate 1e-3")
        self.every = check_int("every", every, low=1)
        self._since = 0

    def prepare(self, model: nn.Module) -> None:
        self._since = 0

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        self._since += 1
        if self.strength == 0.0 or (self._since < self.every and progress < 1.0):
            return
        threshold = self.strength * self.step_size * self._since
        self._since = 0
        for module in self.targets(model).values():
            module.weight.copy_(singular_value_threshold(module.weight, threshold))


class _FixedRank(Regulariser):
    """Shared by ``factorised`` and ``svd_truncate``: the strength is a rank fraction in (0, 1]."""

    strength_meaning = "rank fraction f in (0, 1]: each touched layer keeps rank r = ceil(f·min(out, in·kh·kw)), at least 1"
    strength_range = (0.0, 1.0)
    default_strength = 0.25

    def __init__(self, strength: float | None = None, *, layers: Sequence[str] | None = None, include_output: bool = False) -> None:
        super().__init__(strength, layers=layers)
        if self.strength == 0.0:
            raise ValueError(f"strength (rank fraction) for {self.name!r} must be > 0, got 0; use e.g. 0.25")
        if layers is not None and include_output:
            raise ValueError("include_output applies only when layers is not given; list the output layer in layers instead")
        self.include_output = bool(include_output)

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The given ``layers``; by default every weight layer except the output layer (the last one), if there are others.

        The output layer's rank is already at most the number of classes, and
        holding it lower costs accuracy out of proportion (digits, FC-64,
        rank fraction 0.25: test accuracy 0.78 with it, 0.92 without, 0.94
        dense); ``include_output=True`` touches it too. A model with a single
        weight layer (``linear``) has that layer touched.
        """
        found = super().targets(model)
        if self.layers is not None or self.include_output or len(found) < 2:
            return found
        output = list(found)[-1]
        return {name: module for name, module in found.items() if name != output}

    def ranks(self, model: nn.Module) -> dict[str, int]:
        """The rank r each touched layer is held at, by qualified name."""
        assert self.strength is not None  # check_strength always sets it for a method with a strength
        return {name: target_rank(m.weight.shape, self.strength) for name, m in self.targets(model).items()}

    def config(self, model: nn.Module | None = None) -> dict[str, Any]:
        record = super().config(model)
        if model is not None:
            record["ranks"] = self.ranks(model)
        return record


class Factorised(_FixedRank):
    """Train ``W = U Vᵀ`` at a fixed rank ``r`` from the start (low-rank training), as Khodak et al. 2021.

    Khodak, Tenenholtz, Mackey & Fusi 2021, "Initialization and
    regularization of factorized neural layers",
    https://arxiv.org/abs/2105.01029, both of its schemes:

    - *spectral initialisation*: each touched layer is parametrised with
      :class:`LowRank`, initialised from the truncated SVD of its initial
      weight, so training starts at the best rank-``r`` approximation of the
      dense initialisation;
    - *Frobenius decay*: the loss gets ``(frobenius_decay/2) · Σ ||U Vᵀ||_F²``
      (the product's norm, not ``||U||² + ||V||²``), computed as
      ``Σ (UᵀU) ∘ (VᵀV)`` without forming ``U Vᵀ``. The paper's rule is to
      give it the coefficient the unfactorised model uses for weight decay,
      so that the factorised model is regularised as its dense counterpart
      is. sparank's counterpart (``none``) trains without weight decay, so the
      default is 0 (no decay), the paper's rule applied here; when the
      comparison is with ``l2`` at λ, set ``frobenius_decay=λ`` (``l2``'s
      penalty is ``(λ/2)·||W||_F²`` on the same layers).

    The optimiser trains ``U`` and ``V``; ``finalise`` bakes ``U Vᵀ`` back into
    a plain weight of rank at most ``r``. By default every weight layer but
    the output layer is touched (see :meth:`targets`); ``include_output=True``
    or ``layers`` choose otherwise.

    Cost: the forward pass never forms ``U Vᵀ``; it applies ``V`` then ``U``
    (:func:`two_factor_forward`, ``batch·r·(in+out)`` multiply-adds for a
    Linear layer instead of ``batch·out·in``). An FC-300-100 epoch on
    Fashion-MNIST (batch 64, Adam, rank fraction 0.25, two CPU cores) takes
    about 0.7x plain training; forming ``U Vᵀ`` each pass took 1.7x.

    Args:
        strength: rank fraction f in (0, 1].
        layers: qualified names of the touched layers (None: all but the output layer).
        include_output: with ``layers=None``, touch the output layer too.
        frobenius_decay: the coefficient of ``(·/2)·||U Vᵀ||_F²`` (0: none).
    """

    name = "factorised"
    summary = "train W = U Vᵀ at fixed rank r = ceil(f·min(out, in)) from an SVD initialisation, optional Frobenius decay"
    reference = "https://arxiv.org/abs/2105.01029"

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        include_output: bool = False,
        frobenius_decay: float = 0.0,
    ) -> None:
        super().__init__(strength, layers=layers, include_output=include_output)
        if isinstance(frobenius_decay, bool) or not isinstance(frobenius_decay, (int, float)) or not (
            math.isfinite(frobenius_decay) and frobenius_decay >= 0
        ):
            raise ValueError(f"frobenius_decay must be a finite number >= 0 (e.g. the l2 λ it stands in for), got {frobenius_decay!r}")
        self.frobenius_decay = float(frobenius_decay)

    def prepare(self, model: nn.Module) -> None:
        ranks = self.ranks(model)
        for name, module in self.targets(model).items():
            factorise(module, ranks[name])

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self.frobenius_decay == 0.0:
            return None
        terms = []
        for module in self.targets(model).values():
            u = module.parametrizations.weight.original0  # (out, r)
            v = module.parametrizations.weight.original1  # (in·kh·kw, r)
            terms.append(((u.T @ u) * (v.T @ v)).sum())  # ||U Vᵀ||_F² = tr(UᵀU VᵀV)
        return 0.5 * self.frobenius_decay * torch.stack(terms).sum()

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        for module in self.targets(model).values():
            bake(module)


class SVDTruncate(_FixedRank):
    """Train dense, truncate each touched weight to its best rank-``r`` approximation, fine-tune at rank ``r``.

    Denton et al. 2014, https://arxiv.org/abs/1404.0736 (truncated SVD of a
    trained network, then fine-tuning). The truncation is held during the
    fine-tune by the :class:`LowRank` parametrisation ``W = U Vᵀ`` initialised
    from the SVD, then baked in: the final weights have rank at most ``r``
    (exactly ``r`` unless the fine-tune makes a factor rank-deficient, which
    does not happen generically). ``fine_tune_epochs=0`` is a one-shot
    truncation. Touched layers as for ``factorised``: all but the output
    layer by default.
    """

    name = "svd_truncate"
    summary = "truncate W to its best rank r after training (SVD), then fine-tune at rank r"
    reference = "https://arxiv.org/abs/1404.0736"

    def __init__(
        self,
        strength: float | None = None,
        *,
        layers: Sequence[str] | None = None,
        include_output: bool = False,
        fine_tune_epochs: int = 5,
    ) -> None:
        super().__init__(strength, layers=layers, include_output=include_output)
        self.fine_tune_epochs = check_int("fine_tune_epochs", fine_tune_epochs, low=0)

    def finalise(self, model: nn.Module, fine_tune: Callable[[int], None]) -> None:
        ranks = self.ranks(model)
        targets = self.targets(model)
        for name, module in targets.items():
            factorise(module, ranks[name])
        if self.fine_tune_epochs > 0:
            fine_tune(self.fine_tune_epochs)
        for module in targets.values():
            bake(module)


#: the classes this module registers, in the order `sparank regularisers` lists them
METHODS: tuple[type[Regulariser], ...] = (Nuclear, SVT, Factorised, SVDTruncate)
