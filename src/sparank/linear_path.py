"""The L1 regularisation path of multinomial logistic regression, with exact FGSM ε* at every point.

The question of PROTOCOL §7: L1 regularisation makes a linear classifier
sparse, but does it make it easier to fool? Along a log-spaced grid of λ,
multinomial logistic regression ``f(x) = W x + b`` is fitted to

    mean cross-entropy + λ·||W||_1        (the bias is not penalised)

by three independent routes:

- ``l1``: the package's training loop with the ``l1`` penalty (sub-gradient);
- ``prox_l1``: the same loop with ``prox_l1`` (soft-thresholding after each
  step; with SGD without momentum and ``step_size = lr`` this is proximal SGD
  on exactly the objective above);
- ``sklearn``: scikit-learn's ``LogisticRegression`` with a pure L1 penalty and
  the SAGA solver (Defazio et al. 2014, https://arxiv.org/abs/1407.0202),
  which minimises ``C·Σ_n CE_n + ||W||_1``; dividing by ``C·n`` gives the
  objective above with ``λ = 1/(C·n)``, so ``C = 1/(λ·n_train)``.

Every point is one run of the package's one runner: :func:`path_spec` makes
its :class:`~sparank.run.RunSpec` (``arch = "linear"``; ``sklearn`` points fit by
SAGA through :class:`~sparank.run.SklearnSpec`, each from zero weights; the
FGSM ε* of every evaluation input measured in closed form through
``MeasureSpec(closed_form=True)``) and :func:`sparank.run.run` fits and measures
it, as ``sparank study`` or ``sparank train`` would. Beside clean accuracy,
sparsity and ``||W||_1``, :func:`run_l1_path` computes the objective, the
optimality (KKT) violation and the optimal perturbations, writes a figure (PNG
and SVG) and a table (CSV and Markdown) through :mod:`sparank.report`, and
records every run with :func:`sparank.run.record` in a :class:`~sparank.store.Store`
if one is given (under its content key: a rerun stores nothing twice).

The default grid runs from ``1e-4·λ_max`` (no visible effect) to
``0.9·λ_max``, where ``λ_max = max |∂ mean CE / ∂W|`` at ``W = 0`` with the
bias at its optimum (class log-frequencies) is the smallest λ for which
``W = 0`` is optimal: beyond it every weight is exactly zero.

Controls (a rise of ε* along the path is attributed to sparsity only if it
beats them). Every L1 model is compared, input by input, with

- ``reference``: the same method's smallest-λ model (the dense starting point);
- ``rescaled``: that reference multiplied by ``c = ||W_L1||_1 / ||W_ref||_1``
  (weights and bias): the same norm, no sparsity, the same predictions;
- ``l2_accuracy`` and ``l2_norm``: the model of an L2 path (``l2``, the same
  training loop with ``(λ/2)·||W||_F²``) whose clean accuracy, resp. ``||W||_1``
  (in log), is closest.

Each comparison is the median over inputs of ``log(ε*_L1 / ε*_control)``
pooled over seeds, with a hierarchical bootstrap interval (seeds, then inputs;
:func:`sparank.compare.hierarchical_bootstrap`). Seeds change the data order and
initialisation of the SGD fits and SAGA's sampling order. A reference that
its solver did not converge on is refused: its comparisons are left empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparank.attacks import Norm
from sparank.compare import CONTROL_TITLES, CONTROLS, PathComparison, path_comparisons  # noqa: F401  (the controls: re-exported)
from sparank.data import Dataset, eval_subset
from sparank.linear import boxed_minimal_perturbation, linear_fgsm_robustness, unboxed_minimal_perturbation
from sparank.report import plot_path, write_path_table
from sparank.robustness import CLEAN_WRONG, RobustnessResult
from sparank.run import MeasureSpec, RunSpec, SklearnSpec, TrainSpec, record, run
from sparank.structure import layer_structure
from sparank.train import TrainConfig

if TYPE_CHECKING:
    from sparank.store import Store

#: the comparison of one L1 model with one control (sparank.compare.PathComparison), under its old name
Comparison = PathComparison

#: the three ways of fitting the path, in plotting order
PATH_METHODS = ("l1", "prox_l1", "sklearn")
#: default number of λ values and the range of the grid relative to λ_max
DEFAULT_N_LAMBDAS = 12
DEFAULT_LAMBDA_RANGE = (1e-4, 0.9)
#: the training set size above which the default training config switches to the large-data one
_LARGE = 10_000


def lambda_max(data: Dataset) -> float:
    """The smallest λ at which ``W = 0`` minimises ``mean CE + λ·||W||_1`` on ``data``'s training set.

    With ``W = 0`` the optimal (unpenalised) bias gives ``softmax(b) = π``, the
    class frequencies, and the gradient is ``G = (1 πᵀ − Y)ᵀ X / n``
    (``Y`` one-hot ``(n, K)``, ``X`` ``(n, D)``); by the optimality condition of
    the L1 problem, ``W = 0`` is optimal iff ``λ ≥ max |G|``.
    """
    x = data.train_x.reshape(len(data.train_x), -1).double()
    y = F.one_hot(data.train_y, data.num_classes).double()
    pi = y.mean(0)
    grad = (pi[:, None] * x.mean(0)[None, :]) - y.T @ x / len(x)
    return float(grad.abs().max())


def default_lambdas(
    data: Dataset, *, n: int = DEFAULT_N_LAMBDAS, low: float = DEFAULT_LAMBDA_RANGE[0], high: float = DEFAULT_LAMBDA_RANGE[1]
) -> list[float]:
    """``n`` log-spaced λ from ``low·λ_max`` to ``high·λ_max`` (see :func:`lambda_max`), increasing."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high (fractions of lambda_max), got low={low}, high={high}")
    top = lambda_max(data)
    return [float(v) for v in top * np.logspace(math.log10(low), math.log10(high), n)]


def default_train_config(data: Dataset) -> TrainConfig:
    """Plain SGD without momentum, so that ``prox_l1`` with ``step_size = lr`` is proximal SGD.

    digits-sized data: 100 epochs, batch 32, lr 0.2 (about 1 s per model on one core);
    above 10,000 training inputs (Fashion-MNIST): 10 epochs, batch 128, lr 0.2.
    """
    if len(data.train_x) > _LARGE:
        return TrainConfig(epochs=10, batch_size=128, lr=0.2, optimizer="sgd", momentum=0.0, seed=0)
    return TrainConfig(epochs=100, batch_size=32, lr=0.2, optimizer="sgd", momentum=0.0, seed=0)


@dataclass(frozen=True)
class SklearnConfig:
    """How scikit-learn's SAGA fits the path: every λ from zero weights (one run each, see :func:`path_spec`)."""

    tol: float = 1e-4  # SAGA's stopping tolerance on the change of the weights
    max_iter: int = 1000  # SAGA epochs per λ at most; the point is flagged not converged past it
    max_train: int | None = None  # fit on the first max_train training inputs only (None: all); speeds up Fashion-MNIST
    reference_max_iter: int | None = None  # cap for the smallest λ (the reference every ratio divides by); None: max_iter

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ValueError(f"sklearn tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"sklearn max_iter must be >= 1, got {self.max_iter}")
        if self.max_train is not None and self.max_train < 2:
            raise ValueError(f"sklearn max_train must be >= 2 or None (all), got {self.max_train}")
        if self.reference_max_iter is not None and self.reference_max_iter < 1:
            raise ValueError(f"sklearn reference_max_iter must be >= 1 or None (max_iter), got {self.reference_max_iter}")


def default_sklearn_config(data: Dataset) -> SklearnConfig:
    """SAGA settings for ``data``: all of digits; a 10,000-input subsample for anything larger.

    digits-sized data: tol 1e-4, up to 3000 epochs per λ (each fit starts from zero
    weights; at the smallest λ of the default grid SAGA needs about 1950). Above 10,000 training inputs
    (Fashion-MNIST): the first 10,000 training inputs, tol 1e-3, up to 100 epochs per λ
    and 1000 for the smallest λ (the reference every ratio divides by), because SAGA on
    all 60,000 28x28 images takes minutes per λ; points that hit the cap are flagged
    ``converged = False``, and an unconverged reference is refused.
    """
    if len(data.train_x) > _LARGE:
        return SklearnConfig(tol=1e-3, max_iter=100, max_train=_LARGE, reference_max_iter=1000)
    return SklearnConfig(max_iter=3000)


#: seeds of the study by default: each changes the SGD fits' initialisation and data order and SAGA's sampling order
DEFAULT_SEEDS = (0, 1, 2)
#: the L2 control path: λ of mean CE + (λ/2)·||W||_F², log-spaced; the largest keeps lr·λ < 1 at lr 0.2
DEFAULT_N_L2 = 12
DEFAULT_L2_RANGE = (1e-5, 3.0)


def default_l2_lambdas(*, n: int = DEFAULT_N_L2, low: float = DEFAULT_L2_RANGE[0], high: float = DEFAULT_L2_RANGE[1]) -> list[float]:
    """``n`` log-spaced λ of the L2 control path, ``low`` to ``high`` (absolute: L2 has no λ_max)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high for the L2 grid, got low={low}, high={high}")
    return [float(v) for v in np.logspace(math.log10(low), math.log10(high), n)]


@dataclass(frozen=True)
class PathPoint:
    """One model (method, λ, seed): how it was fitted, its accuracy and structure, and its exact ε* summary."""

    method: str  # "l1", "prox_l1", "sklearn", or "l2" (the control path)
    lam: float  # λ of mean CE + λ·||W||_1 (for "l2": of mean CE + (λ/2)·||W||_F²)
    seed: int
    sklearn_c: float | None  # the C given to scikit-learn (1/(λ·n_fit)), None for the package's methods
    converged: bool | None  # sklearn: stopped before max_iter; None for the package's methods (a fixed number of epochs)
    n_iter: int | None  # sklearn: SAGA epochs used
    kkt_violation: float | None  # L1 methods: max over weights of the optimality-condition violation / λ (0 at the optimum)
    objective: float  # the method's objective reached (float64, on the data it was fitted on)
    clean_accuracy: float  # on the evaluation inputs
    sparsity: float  # fraction of weights exactly 0
    effective_sparsity: float  # fraction with |w| <= 1e-3·max|w| (PROTOCOL §4)
    l1_norm: float  # ||W||_1
    auc: float  # mean(min(ε*, eps_max)) over the evaluation inputs
    auc_normalised: float  # auc / eps_max
    quantiles: dict[str, float | None]  # 10/25/50/75/90 % quantiles of ε* over correct inputs
    censored_fraction: float
    unboxed_minimum_median: float | None  # median minimal perturbation without the box, over correct inputs
    boxed_minimum_median: float | None  # median minimal L∞ perturbation inside [0, 1] over correct inputs (None for L2 norm)
    seconds: float  # fitting time
    run_id: str | None = None  # the store's run id, if stored

    @property
    def median(self) -> float | None:
        return self.quantiles.get("50")


@dataclass(frozen=True)
class PathResult:
    """The study: settings, one :class:`PathPoint` per (method, λ, seed), the comparisons, weights and files."""

    dataset: str
    norm: str
    eps_max: float
    n_eval: int
    lambdas: list[float]
    l2_lambdas: list[float]
    seeds: list[int]
    lambda_max: float
    points: list[PathPoint]
    comparisons: list[PathComparison]
    weights: dict[tuple[str, float, int], tuple[Tensor, Tensor]] = field(repr=False)  # (method, λ, seed) -> (W, b) float64
    eps_star: dict[tuple[str, float, int], Tensor] = field(repr=False)  # (method, λ, seed) -> (n_eval,) exact ε*; "rescaled:<m>" too
    eval_indices: Tensor = field(repr=False)  # (n_eval,) indices into the test split
    files: dict[str, Path] = field(default_factory=dict)  # "png", "svg", "csv", "md", "comparisons_csv"

    def point(self, method: str, lam: float, seed: int | None = None) -> PathPoint:
        seed = self.seeds[0] if seed is None else seed
        for p in self.points:
            if p.method == method and p.lam == lam and p.seed == seed:
                return p
        raise KeyError((method, lam, seed))

    def comparison(self, method: str, lam: float, control: str) -> PathComparison:
        for c in self.comparisons:
            if c.method == method and c.lam == lam and c.control == control:
                return c
        raise KeyError((method, lam, control))


def _objective(w: Tensor, b: Tensor, x: Tensor, y: Tensor, lam: float, method: str) -> float:
    penalty = 0.5 * lam * float(w.square().sum()) if method == "l2" else lam * float(w.abs().sum())
    return float(F.cross_entropy(x @ w.T + b, y)) + penalty


def kkt_violation(w: Tensor, b: Tensor, x: Tensor, y: Tensor, lam: float) -> float:
    """How far ``(W, b)`` is from optimal for ``mean CE + λ·||W||_1``, in units of λ (0 at the optimum).

    With ``G = ∂ mean CE/∂W``: where ``W_ij ≠ 0`` optimality needs ``G_ij + λ·sign(W_ij) = 0``,
    where ``W_ij = 0`` it needs ``|G_ij| <= λ``; the bias needs ``∂/∂b = 0``. Returns the largest
    violation over all of them, divided by λ: a solver-independent check of convergence.
    """
    p = torch.softmax(x @ w.T + b, dim=1) - F.one_hot(y, w.shape[0]).double()
    grad_w = p.T @ x / len(x)
    grad_b = p.mean(0)
    violation = torch.where(w != 0, (grad_w + lam * w.sign()).abs(), (grad_w.abs() - lam).clamp_min(0.0))
    return float(torch.maximum(violation.max(), grad_b.abs().max()) / lam)


def path_spec(
    method: str,
    lam: float,
    seed: int,
    data: Dataset,
    train_config: TrainConfig,
    sklearn_config: SklearnConfig,
    *,
    reference: bool = False,
    n_eval: int | None = None,
    norm: Norm = "linf",
    eps_max: float = 0.5,
) -> RunSpec:
    """The :class:`~sparank.run.RunSpec` of one point of the path: ``method`` at λ with ``seed``, measured exactly.

    ``l1``, ``prox_l1`` (``step_size = lr``) and ``l2`` train ``"linear"`` with the package's loop
    and ``train_config`` (its seed replaced); ``sklearn`` fits by SAGA on the first
    ``max_train`` training inputs, with ``reference_max_iter`` epochs at most for the
    ``reference`` (smallest-λ) point. FGSM ε* is measured in closed form on the first
    ``n_eval`` test inputs.
    """
    measure = MeasureSpec(n=n_eval, norm=norm, eps_max=eps_max, closed_form=True)
    common: dict[str, Any] = {"dataset": data.name, "arch": "linear", "strength": lam, "seed": seed, "measure": measure}
    if method == "sklearn":
        cap = sklearn_config.reference_max_iter if reference and sklearn_config.reference_max_iter is not None else sklearn_config.max_iter
        fit = SklearnSpec(tol=sklearn_config.tol, max_iter=cap, max_train=sklearn_config.max_train)
        return RunSpec(regulariser="l1", sklearn=fit, **common)
    train = TrainSpec(epochs=train_config.epochs, batch_size=train_config.batch_size, lr=train_config.lr,
                      optimizer=train_config.optimizer, momentum=train_config.momentum)  # fmt: skip
    options = {"step_size": train_config.lr} if method == "prox_l1" else {}
    return RunSpec(regulariser=method, options=options, train=train, **common)


def _median_or_none(values: Tensor) -> float | None:
    return float(np.quantile(values.numpy(), 0.5, method="inverted_cdf")) if len(values) else None


def _measure(w: Tensor, b: Tensor, x: Tensor, y: Tensor, *, norm: Norm, eps_max: float) -> RobustnessResult:
    """Exact ε* of ``W x + b`` on the evaluation inputs, in [0, 1] (a control that is not a trained run: the rescaled reference)."""
    return linear_fgsm_robustness(w, b, x, y, bounds=(0.0, 1.0), norm=norm, eps_max=eps_max)


def _point(
    method: str,
    lam: float,
    seed: int,
    w: Tensor,
    b: Tensor,
    result: RobustnessResult,
    metrics: dict[str, Any],
    *,
    fit: tuple[Tensor, Tensor],
    evaluation: tuple[Tensor, Tensor],
) -> PathPoint:
    """One :class:`PathPoint` from a run's weights, exact measurement and metrics.

    ``fit``: the (flattened, float64) data the method's objective and KKT violation are taken on;
    ``evaluation``: the measured inputs, for the medians of the optimal perturbations.
    """
    summary = result.summary()
    structure = layer_structure(w, name=f"{method} λ={lam:g}")
    x, y = fit
    x_eval, y_eval = evaluation
    correct = result.status != CLEAN_WRONG
    unboxed = _median_or_none(unboxed_minimal_perturbation(w, b, x_eval, y_eval, norm=result.norm)[correct])
    boxed = _median_or_none(boxed_minimal_perturbation(w, b, x_eval[correct], y_eval[correct])) if result.norm == "linf" else None
    return PathPoint(
        method=method,
        lam=lam,
        seed=seed,
        sklearn_c=metrics.get("C"),
        converged=metrics.get("converged"),
        n_iter=metrics.get("n_iter"),
        kkt_violation=None if method == "l2" else kkt_violation(w, b, x, y, lam),
        objective=_objective(w, b, x, y, lam, method),
        clean_accuracy=summary.clean_accuracy,
        sparsity=structure.sparsity,
        effective_sparsity=structure.effective_sparsity,
        l1_norm=structure.l1_norm,
        auc=summary.auc,
        auc_normalised=summary.auc_normalised,
        quantiles=summary.quantiles,
        censored_fraction=summary.censored_fraction,
        unboxed_minimum_median=unboxed,
        boxed_minimum_median=boxed,
        seconds=float(metrics["seconds"]),
    )


def run_l1_path(
    dataset: Dataset,
    *,
    out_dir: Path | str,
    lambdas: Sequence[float] | None = None,
    methods: Sequence[str] = PATH_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    l2_lambdas: Sequence[float] | None = None,
    store: Store | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    n_eval: int | None = None,
    norm: Norm = "linf",
    eps_max: float = 0.5,
    train_config: TrainConfig | None = None,
    sklearn_config: SklearnConfig | None = None,
    n_boot: int = 2000,
) -> PathResult:
    """Fit the L1 path with each method and seed, the L2 control path, measure exact ε* everywhere, compare, write.

    Args:
        dataset: any :class:`~sparank.data.Dataset` (digits, Fashion-MNIST...).
        out_dir: where ``l1_path_<dataset>.{png,svg,csv,md}`` and ``l1_path_<dataset>_comparisons.csv`` are written.
        lambdas: the λ grid (positive); default :func:`default_lambdas` (12 values).
        methods: a subset of ``("l1", "prox_l1", "sklearn")``.
        seeds: training seeds (at least one; three or more for intervals that mean something).
        l2_lambdas: the L2 control path's grid; default :func:`default_l2_lambdas`; ``[]`` skips the L2 controls.
        store: if given, every run is recorded (:func:`sparank.run.record`): weights, metrics,
            the exact ε* measurement (and the ``best`` record with the masking flags).
        progress: called as ``progress(done, total, message)`` after each fitted model.
        n_eval: measure the first ``n_eval`` test inputs (None: the whole test split).
        norm: ``"linf"`` (FGSM) or ``"l2"``.
        eps_max: the largest ε considered (inputs in [0, 1]).
        train_config: training of ``l1``/``prox_l1``/``l2`` (its seed is replaced by each of
            ``seeds``); default :func:`default_train_config`.
        sklearn_config: tolerance, iteration caps and training subsample of SAGA; default
            :func:`default_sklearn_config`.
        n_boot: bootstrap replicates per comparison.

    Returns:
        :class:`PathResult`; ``files`` holds the paths written.
    """
    unknown = [m for m in methods if m not in PATH_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {', '.join(PATH_METHODS)}, got {list(methods)}")
    seed_list = [int(s) for s in seeds]
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct integers, at least one, got {list(seeds)}; e.g. --seeds 0,1,2")
    grid = default_lambdas(dataset) if lambdas is None else [float(v) for v in lambdas]
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ValueError(f"lambdas must be positive finite numbers, got {grid}; use --lambdas 1e-4,1e-3,1e-2")
    grid = sorted(set(grid))
    l2_grid = sorted(set(default_l2_lambdas() if l2_lambdas is None else [float(v) for v in l2_lambdas]))
    if any(not (math.isfinite(v) and v > 0) for v in l2_grid):
        raise ValueError(f"l2_lambdas must be positive finite numbers, got {l2_grid}")
    config = train_config or default_train_config(dataset)
    if l2_grid and max(l2_grid) * config.lr >= 2:
        raise ValueError(
            f"l2_lambdas up to {max(l2_grid)} with lr {config.lr}: SGD on (λ/2)·||W||² diverges for lr·λ >= 2; lower the L2 grid"
        )
    sk_config = sklearn_config or default_sklearn_config(dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices, x_eval, y_eval = eval_subset(dataset, n_eval)
    x_train = dataset.train_x.reshape(len(dataset.train_x), -1).double()
    y_train = dataset.train_y
    all_methods = [*methods, *(["l2"] if l2_grid else [])]
    total = len(seed_list) * (len(methods) * len(grid) + len(l2_grid))
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    n_fit = len(x_train) if sk_config.max_train is None else sk_config.max_train  # SAGA fits the first max_train inputs
    sk_x, sk_y = x_train[:n_fit], y_train[:n_fit]
    points: list[PathPoint] = []
    weights: dict[tuple[str, float, int], tuple[Tensor, Tensor]] = {}
    eps_star: dict[tuple[str, float, int], Tensor] = {}
    results: dict[tuple[str, float, int], RobustnessResult] = {}
    for seed in seed_list:
        for method in all_methods:
            for lam in grid if method != "l2" else l2_grid:
                spec = path_spec(
                    method, lam, seed, dataset, config, sk_config, reference=lam == grid[0], n_eval=n_eval, norm=norm, eps_max=eps_max
                )
                outcome = run(spec, data=dataset)
                run_id = record(store, outcome) if store is not None else None
                w, b = (outcome.state_dict[k].double() for k in ("out.weight", "out.bias"))
                result = outcome.measurements[0].result  # the exact FGSM ε* (measure.closed_form)
                fit = (sk_x, sk_y) if method == "sklearn" else (x_train, y_train)
                point = _point(method, lam, seed, w, b, result, outcome.metrics, fit=fit, evaluation=(x_eval, y_eval))
                points.append(replace(point, run_id=run_id))
                weights[(method, lam, seed)] = (w, b)
                eps_star[(method, lam, seed)] = result.eps_star.clone()
                results[(method, lam, seed)] = result
                tick(f"seed {seed} {method} λ={lam:.3g} ({point.seconds:.1f} s)")

    order = {m: i for i, m in enumerate(all_methods)}
    points.sort(key=lambda p: (order[p.method], p.lam, p.seed))
    # the rescaled references: the smallest-λ model times ||W_L1||_1 / ||W_ref||_1, measured exactly
    by_key = {(p.method, p.lam, p.seed): p for p in points}
    smallest = grid[0]
    for method in methods:
        for seed in seed_list:
            w_ref, b_ref = weights[(method, smallest, seed)]
            ref_norm = float(w_ref.abs().sum())
            for lam in grid:
                c = by_key[(method, lam, seed)].l1_norm / ref_norm if ref_norm > 0 else 1.0
                result = _measure(c * w_ref, c * b_ref, x_eval, y_eval, norm=norm, eps_max=eps_max)
                results[(f"rescaled:{method}", lam, seed)] = result
                eps_star[(f"rescaled:{method}", lam, seed)] = result.eps_star.clone()

    comparisons = path_comparisons(
        methods, grid, l2_grid, seed_list, by_key,
        {k: r.eps_star.numpy() for k, r in results.items()}, {k: (r.status != CLEAN_WRONG).numpy() for k, r in results.items()},
        eps_max=float(eps_max), n_boot=n_boot,
    )  # fmt: skip
    result_path = PathResult(
        dataset=dataset.name,
        norm=norm,
        eps_max=float(eps_max),
        n_eval=len(indices),
        lambdas=grid,
        l2_lambdas=l2_grid,
        seeds=seed_list,
        lambda_max=lambda_max(dataset),
        points=points,
        comparisons=comparisons,
        weights=weights,
        eps_star=eps_star,
        eval_indices=indices,
    )
    stem = out / f"l1_path_{dataset.name}"
    files = write_path_table(result_path, stem)
    files.update(plot_path(result_path, stem))
    return replace(result_path, files=files)
