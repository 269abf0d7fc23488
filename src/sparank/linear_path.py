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

At every point the exact ε* of every evaluation input is computed in closed
form (:func:`sparank.linear.linear_fgsm_robustness`), with clean accuracy,
sparsity and ``||W||_1``; :func:`run_l1_path` writes a figure (PNG and SVG)
and a table (CSV and Markdown), and records every model and measurement in a
:class:`~sparank.store.Store` if one is given.

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
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparank.attacks import Norm
from sparank.compare import hierarchical_bootstrap, paired_log_ratios
from sparank.data import Dataset, eval_subset
from sparank.linear import (
    affine_parameters,
    binary_as_multiclass,
    boxed_minimal_perturbation,
    linear_fgsm_robustness,
    unboxed_minimal_perturbation,
)
from sparank.regularisers import get as get_regulariser
from sparank.report import plot_path, write_path_table
from sparank.robustness import CLEAN_WRONG, RobustnessResult
from sparank.structure import layer_structure
from sparank.train import TrainConfig, train_model

if TYPE_CHECKING:
    from sparank.store import Store

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


def default_lambdas(data: Dataset, *, n: int = DEFAULT_N_LAMBDAS, low: float = DEFAULT_LAMBDA_RANGE[0], high: float = DEFAULT_LAMBDA_RANGE[1]) -> list[float]:
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
    """How scikit-learn's SAGA fits the path (warm-started from the largest λ down)."""

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

    digits-sized data: tol 1e-4, up to 1000 epochs per λ. Above 10,000 training inputs
    (Fashion-MNIST): the first 10,000 training inputs, tol 1e-3, up to 100 epochs per λ
    and 1000 for the smallest λ (the reference every ratio divides by), because SAGA on
    all 60,000 28x28 images takes minutes per λ; points that hit the cap are flagged
    ``converged = False``, and an unconverged reference is refused.
    """
    if len(data.train_x) > _LARGE:
        return SklearnConfig(tol=1e-3, max_iter=100, max_train=_LARGE, reference_max_iter=1000)
    return SklearnConfig()


#: seeds of the study by default: each changes the SGD fits' initialisation and data order and SAGA's sampling order
DEFAULT_SEEDS = (0, 1, 2)
#: the L2 control path: λ of mean CE + (λ/2)·||W||_F², log-spaced; the largest keeps lr·λ < 1 at lr 0.2
DEFAULT_N_L2 = 12
DEFAULT_L2_RANGE = (1e-5, 3.0)
#: the controls every L1 model is compared with, in table order
CONTROLS = ("reference", "rescaled", "l2_accuracy", "l2_norm")
CONTROL_TITLES = {
    "reference": "same method, smallest λ",
    "rescaled": "reference × ‖W‖₁ ratio",
    "l2_accuracy": "L2 path, matched accuracy",
    "l2_norm": "L2 path, matched ‖W‖₁",
}


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
class Comparison:
    """ε* of one L1 model (method, λ) against one control, paired over inputs and pooled over seeds."""

    method: str
    lam: float
    control: str  # one of CONTROLS
    ratio: float | None  # exp(median log(ε*/ε*_control)); None if refused (unconverged reference) or no common correct input
    low: float | None  # 95 % hierarchical bootstrap interval of the ratio
    high: float | None
    fraction_lower: float | None  # pooled fraction of inputs whose ε* is strictly below the control's
    n_seeds: int
    n_inputs: int  # paired inputs pooled over seeds
    control_accuracy: float | None  # the control's clean accuracy, mean over seeds
    control_l1_norm: float | None  # the control's ||W||_1, mean over seeds
    note: str = ""  # why the ratio is missing, if it is


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
    comparisons: list[Comparison]
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

    def comparison(self, method: str, lam: float, control: str) -> Comparison:
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


def _fit_package(method: str, lam: float, data: Dataset, config: TrainConfig) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Train ``build_model('linear')`` with the package's ``l1``, ``prox_l1`` or ``l2`` at λ; ``(W, b, regulariser config)``."""
    options: dict[str, Any] = {"step_size": config.lr} if method == "prox_l1" else {}
    reg = get_regulariser(method, lam, **options)
    model, _history = train_model("linear", data, config, reg)
    w, b = affine_parameters(model)
    return w, b, reg.config(model)


def _sklearn_data(data: Dataset, config: SklearnConfig) -> tuple[np.ndarray, np.ndarray]:
    x = data.train_x.reshape(len(data.train_x), -1).double().numpy()
    y = data.train_y.numpy()
    if config.max_train is not None:
        x, y = x[: config.max_train], y[: config.max_train]
    return x, y


def _sklearn_path(
    lambdas: Sequence[float], data: Dataset, config: SklearnConfig, progress: Callable[[float, float], None] | None = None, *, seed: int = 0
) -> dict[float, tuple[Tensor, Tensor, float, bool, float, int]]:
    """SAGA fits for every λ, largest first, each warm-started from the previous; λ -> (W, b, C, converged, seconds, n_iter)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x, y = _sklearn_data(data, config)
    n = len(x)
    clf = LogisticRegression(C=1.0, l1_ratio=1.0, solver="saga", tol=config.tol, max_iter=config.max_iter, warm_start=True, random_state=seed)
    fits: dict[float, tuple[Tensor, Tensor, float, bool, float, int]] = {}
    smallest = min(lambdas)
    for lam in sorted(lambdas, reverse=True):
        c = 1.0 / (lam * n)
        cap = config.reference_max_iter if (lam == smallest and config.reference_max_iter is not None) else config.max_iter
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.set_params(C=c, max_iter=cap)
            clf.fit(x, y)
        n_iter = int(np.max(clf.n_iter_))
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught) and n_iter < cap
        coef = torch.from_numpy(np.array(clf.coef_, dtype=np.float64))
        intercept = torch.from_numpy(np.array(clf.intercept_, dtype=np.float64))
        if coef.shape[0] == 1:  # binary problems: one weight vector for class 1 against class 0
            coef, intercept = binary_as_multiclass(coef[0], intercept[0])
        fits[lam] = (coef, intercept, c, converged, time.perf_counter() - start, n_iter)
        if progress is not None:
            progress(lam, fits[lam][4])
    return fits


def _median_or_none(values: Tensor) -> float | None:
    return float(np.quantile(values.numpy(), 0.5, method="inverted_cdf")) if len(values) else None


def _measure(w: Tensor, b: Tensor, x: Tensor, y: Tensor, *, norm: Norm, eps_max: float, minima: bool = True) -> tuple[RobustnessResult, float | None, float | None]:
    """Exact ε* in [0, 1], and the medians of the unboxed and boxed minimal perturbations over correct inputs."""
    result = linear_fgsm_robustness(w, b, x, y, bounds=(0.0, 1.0), norm=norm, eps_max=eps_max)
    if not minima:
        return result, None, None
    correct = result.status != CLEAN_WRONG
    unboxed = _median_or_none(unboxed_minimal_perturbation(w, b, x, y, norm=norm)[correct])
    boxed = _median_or_none(boxed_minimal_perturbation(w, b, x[correct], y[correct])) if norm == "linf" else None
    return result, unboxed, boxed


def _closest(candidates: Sequence[PathPoint], value: float, key: Callable[[PathPoint], float]) -> PathPoint:
    return min(candidates, key=lambda p: (abs(key(p) - value), p.lam))


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
        store: if given, every model is stored as a run of kind ``"linear"`` with its
            weights, and its ε* as a measurement.
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
        raise ValueError(f"l2_lambdas up to {max(l2_grid)} with lr {config.lr}: SGD on (λ/2)·||W||² diverges for lr·λ >= 2; lower the L2 grid")
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

    fitted: dict[tuple[str, float, int], tuple[Tensor, Tensor, dict[str, Any]]] = {}
    for seed in seed_list:
        seeded = replace(config, seed=seed)
        for method in all_methods:
            if method == "sklearn":
                fits = _sklearn_path(grid, dataset, sk_config, lambda lam, s, seed=seed: tick(f"seed {seed} sklearn λ={lam:.3g} ({s:.1f} s)"), seed=seed)
                for lam, (w, b, c, converged, seconds, n_iter) in fits.items():
                    info = {"C": c, "converged": converged, "seconds": seconds, "n_iter": n_iter, "tol": sk_config.tol}
                    fitted[(method, lam, seed)] = (w, b, {**info, "max_iter": sk_config.max_iter, "max_train": sk_config.max_train})
                continue
            for lam in grid if method != "l2" else l2_grid:
                start = time.perf_counter()
                w, b, reg_config = _fit_package(method, lam, dataset, seeded)
                seconds = time.perf_counter() - start
                fitted[(method, lam, seed)] = (w, b, {"regulariser": reg_config, "converged": None, "seconds": seconds})
                tick(f"seed {seed} {method} λ={lam:.3g} ({seconds:.1f} s)")

    sk_x, sk_y = (torch.from_numpy(a) for a in _sklearn_data(dataset, sk_config)) if "sklearn" in methods else (x_train, y_train)
    points: list[PathPoint] = []
    weights: dict[tuple[str, float, int], tuple[Tensor, Tensor]] = {}
    eps_star: dict[tuple[str, float, int], Tensor] = {}
    results: dict[tuple[str, float, int], RobustnessResult] = {}
    for (method, lam, seed), (w, b, info) in fitted.items():
        result, unboxed, boxed = _measure(w, b, x_eval, y_eval, norm=norm, eps_max=eps_max)
        summary = result.summary()
        structure = layer_structure(w, name=f"{method} λ={lam:g}")
        fit_x, fit_y = (sk_x, sk_y) if method == "sklearn" else (x_train, y_train)
        point = PathPoint(
            method=method,
            lam=lam,
            seed=seed,
            sklearn_c=info.get("C"),
            converged=info["converged"],
            n_iter=info.get("n_iter"),
            kkt_violation=None if method == "l2" else kkt_violation(w, b, fit_x, fit_y, lam),
            objective=_objective(w, b, fit_x, fit_y, lam, method),
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
            seconds=float(info["seconds"]),
        )
        if store is not None:
            point = replace(point, run_id=_store_point(store, dataset, point, w, b, info, result, indices, replace(config, seed=seed)))
        points.append(point)
        weights[(method, lam, seed)] = (w, b)
        eps_star[(method, lam, seed)] = result.eps_star.clone()
        results[(method, lam, seed)] = result

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
                result, _, _ = _measure(c * w_ref, c * b_ref, x_eval, y_eval, norm=norm, eps_max=eps_max, minima=False)
                results[(f"rescaled:{method}", lam, seed)] = result
                eps_star[(f"rescaled:{method}", lam, seed)] = result.eps_star.clone()

    comparisons = _compare_all(methods, grid, l2_grid, seed_list, by_key, results, eps_max=float(eps_max), n_boot=n_boot)
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


def _compare_all(
    methods: Sequence[str],
    grid: Sequence[float],
    l2_grid: Sequence[float],
    seeds: Sequence[int],
    by_key: dict[tuple[str, float, int], PathPoint],
    results: dict[tuple[str, float, int], RobustnessResult],
    *,
    eps_max: float,
    n_boot: int,
) -> list[Comparison]:
    """Every L1 model against each control of :data:`CONTROLS`, paired per seed, pooled with a hierarchical bootstrap."""
    comparisons: list[Comparison] = []
    rng = np.random.default_rng(0)
    for method in methods:
        unconverged = [s for s in seeds if by_key[(method, grid[0], s)].converged is False]
        for lam in grid:
            for control in CONTROLS:
                if control.startswith("l2") and not l2_grid:
                    continue
                groups, lower, matched = [], [], []
                for seed in seeds:
                    point = by_key[(method, lam, seed)]
                    if control == "reference":
                        key = (method, grid[0], seed)
                    elif control == "rescaled":
                        key = (f"rescaled:{method}", lam, seed)
                    else:
                        l2_points = [by_key[("l2", v, seed)] for v in l2_grid]
                        if control == "l2_accuracy":
                            best = _closest(l2_points, point.clean_accuracy, lambda p: p.clean_accuracy)
                        else:
                            best = _closest(l2_points, math.log(point.l1_norm), lambda p: math.log(max(p.l1_norm, 1e-300)))
                        key = ("l2", best.lam, seed)
                    ours, theirs = results[(method, lam, seed)], results[key]
                    log_ratio = paired_log_ratios(ours.eps_star.numpy(), theirs.eps_star.numpy(), cap=eps_max)
                    both = (ours.status != CLEAN_WRONG) & (theirs.status != CLEAN_WRONG)
                    groups.append(log_ratio)
                    lower.append((ours.eps_star[both].clamp(max=eps_max) < theirs.eps_star[both].clamp(max=eps_max)).numpy())
                    if control == "rescaled":  # same predictions as the reference, the L1 model's norm
                        ref = by_key[(method, grid[0], seed)]
                        matched.append((ref.clean_accuracy, point.l1_norm))
                    else:
                        matched.append((by_key[key].clean_accuracy, by_key[key].l1_norm))
                n_inputs = int(sum(len(g) for g in groups))
                acc = float(np.mean([m[0] for m in matched]))
                norm_ = float(np.mean([m[1] for m in matched]))
                base = {"method": method, "lam": lam, "control": control, "n_seeds": len(seeds), "n_inputs": n_inputs}
                if unconverged and control in ("reference", "rescaled"):
                    note = f"refused: the reference (λ = {grid[0]:.3g}) did not converge for seed(s) {unconverged}"
                    comparisons.append(Comparison(**base, ratio=None, low=None, high=None, fraction_lower=None, control_accuracy=acc, control_l1_norm=norm_, note=note))
                    continue
                if n_inputs == 0:
                    comparisons.append(Comparison(**base, ratio=None, low=None, high=None, fraction_lower=None, control_accuracy=acc, control_l1_norm=norm_, note="no input correct under both"))
                    continue
                interval = hierarchical_bootstrap(groups, rng=rng, n_boot=n_boot).exp()
                comparisons.append(
                    Comparison(
                        **base,
                        ratio=interval.estimate,
                        low=interval.low,
                        high=interval.high,
                        fraction_lower=float(np.concatenate(lower).mean()),
                        control_accuracy=acc,
                        control_l1_norm=norm_,
                    )
                )
    if any(c.note.startswith("refused") for c in comparisons):
        warnings.warn("an L1 path's reference fit did not converge: its reference comparisons are not reported; raise max_iter", stacklevel=3)
    return comparisons


def _store_point(
    store: Store,
    data: Dataset,
    point: PathPoint,
    w: Tensor,
    b: Tensor,
    info: dict[str, Any],
    result: RobustnessResult,
    indices: Tensor,
    train_config: TrainConfig,
) -> str:
    """One run of kind ``"linear"`` (weights as ``build_model('linear')``'s state dict) and its exact measurement."""
    from sparank.models import build_model
    from sparank.structure import model_structure

    model = build_model("linear", data.input_shape, data.num_classes)
    with torch.no_grad():
        model.out.weight.copy_(w)
        model.out.bias.copy_(b)

    config: dict[str, Any] = {
        "dataset": data.name,
        "arch": "linear",
        "path_method": point.method,
        "lambda": point.lam,
        "seed": point.seed,
        "objective": "mean cross-entropy + lambda/2 * ||W||_F^2 (bias not penalised)"
        if point.method == "l2"
        else "mean cross-entropy + lambda * ||W||_1 (bias not penalised)",
    }
    if point.method == "sklearn":
        config["sklearn"] = {k: info[k] for k in ("C", "tol", "max_iter", "max_train", "n_iter")} | {"solver": "saga", "l1_ratio": 1.0}
    else:
        config["regulariser"] = info["regulariser"]
        config["train"] = train_config.to_dict()
    metrics = {k: v for k, v in asdict(point).items() if k not in ("method", "lam", "run_id", "quantiles")}
    run_id = store.add_run(
        kind="linear",
        config=config,
        metrics=metrics,
        structure=model_structure(model).to_dict(),
        state_dict=model.state_dict(),
    )
    store.add_measurement(run_id, config={"n": len(indices), "method": "closed_form", "bounds": [0.0, 1.0]}, result=result, indices=indices)
    return run_id
