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
"""

from __future__ import annotations

import csv
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
from sparank.data import Dataset, eval_subset
from sparank.linear import affine_parameters, binary_as_multiclass, linear_fgsm_robustness, unboxed_minimal_perturbation
from sparank.regularisers import get as get_regulariser
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

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ValueError(f"sklearn tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"sklearn max_iter must be >= 1, got {self.max_iter}")
        if self.max_train is not None and self.max_train < 2:
            raise ValueError(f"sklearn max_train must be >= 2 or None (all), got {self.max_train}")


def default_sklearn_config(data: Dataset) -> SklearnConfig:
    """SAGA settings for ``data``: all of digits; a 10,000-input subsample for anything larger.

    digits-sized data: tol 1e-4, up to 1000 epochs per λ. Above 10,000 training inputs
    (Fashion-MNIST): the first 10,000 training inputs, tol 1e-3, up to 100 epochs per λ,
    because SAGA on all 60,000 28x28 images takes minutes per λ; points that hit the cap
    are flagged ``converged = False``.
    """
    if len(data.train_x) > _LARGE:
        return SklearnConfig(tol=1e-3, max_iter=100, max_train=_LARGE)
    return SklearnConfig()


@dataclass(frozen=True)
class PathPoint:
    """One model on the path: how it was fitted, its accuracy and structure, and its exact ε* summary."""

    method: str  # "l1", "prox_l1" or "sklearn"
    lam: float  # λ of mean CE + λ·||W||_1
    sklearn_c: float | None  # the C given to scikit-learn (1/(λ·n_fit)), None for the package's methods
    converged: bool | None  # sklearn: stopped before max_iter; None for the package's methods (a fixed number of epochs)
    objective: float  # mean training CE + λ·||W||_1 reached (float64, full training set)
    clean_accuracy: float  # on the evaluation inputs
    sparsity: float  # fraction of weights exactly 0
    effective_sparsity: float  # fraction with |w| <= 1e-3·max|w| (PROTOCOL §4)
    l1_norm: float  # ||W||_1
    auc: float  # mean(min(ε*, eps_max)) over the evaluation inputs
    auc_normalised: float  # auc / eps_max
    quantiles: dict[str, float | None]  # 10/25/50/75/90 % quantiles of ε* over correct inputs
    censored_fraction: float
    min_perturbation_median: float | None  # median optimal L∞/L2 perturbation (unclipped) over correct inputs
    # exp(median log(ε*/ε*_ref)) over inputs that this model and the method's smallest-λ model both
    # classify correctly, ε* capped at eps_max (PROTOCOL §6's paired statistic, without the bootstrap)
    paired_ratio_median: float | None
    paired_fraction_lower: float | None  # over the same inputs: the fraction whose ε* is strictly smaller than the reference's
    seconds: float  # fitting time
    run_id: str | None = None  # the store's run id, if stored

    @property
    def median(self) -> float | None:
        return self.quantiles.get("50")


@dataclass(frozen=True)
class PathResult:
    """The whole path: settings, one :class:`PathPoint` per (method, λ), the fitted weights and the files written."""

    dataset: str
    norm: str
    eps_max: float
    n_eval: int
    lambdas: list[float]
    lambda_max: float
    points: list[PathPoint]
    weights: dict[tuple[str, float], tuple[Tensor, Tensor]] = field(repr=False)  # (method, λ) -> (W (K, D), b (K,)) float64
    eps_star: dict[tuple[str, float], Tensor] = field(repr=False)  # (method, λ) -> (n_eval,) exact ε*
    eval_indices: Tensor = field(repr=False)  # (n_eval,) indices into the test split
    files: dict[str, Path] = field(default_factory=dict)  # "png", "svg", "csv", "md"

    def point(self, method: str, lam: float) -> PathPoint:
        for p in self.points:
            if p.method == method and p.lam == lam:
                return p
        raise KeyError((method, lam))


def _objective(w: Tensor, b: Tensor, x: Tensor, y: Tensor, lam: float) -> float:
    return float(F.cross_entropy(x @ w.T + b, y) + lam * w.abs().sum())


def _fit_package(method: str, lam: float, data: Dataset, config: TrainConfig) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Train ``build_model('linear')`` with the package's ``l1`` or ``prox_l1`` at λ; ``(W, b, regulariser config)``."""
    options: dict[str, Any] = {"step_size": config.lr} if method == "prox_l1" else {}
    reg = get_regulariser(method, lam, **options)
    model, _history = train_model("linear", data, config, reg)
    w, b = affine_parameters(model)
    return w, b, reg.config(model)


def _sklearn_path(
    lambdas: Sequence[float], data: Dataset, config: SklearnConfig, progress: Callable[[float, float], None] | None = None
) -> dict[float, tuple[Tensor, Tensor, float, bool, float]]:
    """SAGA fits for every λ, largest first, each warm-started from the previous; λ -> (W, b, C, converged, seconds)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = data.train_x.reshape(len(data.train_x), -1).double().numpy()
    y = data.train_y.numpy()
    if config.max_train is not None:
        x, y = x[: config.max_train], y[: config.max_train]
    n = len(x)
    clf = LogisticRegression(C=1.0, l1_ratio=1.0, solver="saga", tol=config.tol, max_iter=config.max_iter, warm_start=True, random_state=0)
    fits: dict[float, tuple[Tensor, Tensor, float, bool, float]] = {}
    for lam in sorted(lambdas, reverse=True):
        c = 1.0 / (lam * n)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.set_params(C=c)
            clf.fit(x, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        coef = torch.from_numpy(np.array(clf.coef_, dtype=np.float64))
        intercept = torch.from_numpy(np.array(clf.intercept_, dtype=np.float64))
        if coef.shape[0] == 1:  # binary problems: one weight vector for class 1 against class 0
            coef, intercept = binary_as_multiclass(coef[0], intercept[0])
        fits[lam] = (coef, intercept, c, converged, time.perf_counter() - start)
        if progress is not None:
            progress(lam, fits[lam][4])
    return fits


def paired_ratio(result: RobustnessResult, reference: RobustnessResult) -> tuple[float | None, float | None]:
    """Paired comparison over the inputs both classify correctly, ε* capped at eps_max (PROTOCOL §6, no bootstrap).

    Both results must be over the same inputs, in the same order.

    Returns:
        ``exp(median log(ε*/ε*_ref))`` (above 1: ``result`` needs a larger ε on the
        typical input) and the fraction of those inputs whose ε* is strictly smaller
        than the reference's; ``(None, None)`` if no input is correct under both.
    """
    both = (result.status != CLEAN_WRONG) & (reference.status != CLEAN_WRONG)
    if not bool(both.any()):
        return None, None
    ours = result.eps_star[both].clamp(max=result.eps_max)
    theirs = reference.eps_star[both].clamp(max=reference.eps_max)
    log_ratio = (ours.log() - theirs.log()).numpy()
    return float(np.exp(np.quantile(log_ratio, 0.5, method="inverted_cdf"))), float((ours < theirs).double().mean())


def _measure(w: Tensor, b: Tensor, x: Tensor, y: Tensor, *, norm: Norm, eps_max: float) -> tuple[RobustnessResult, float | None]:
    result = linear_fgsm_robustness(w, b, x, y, bounds=(0.0, 1.0), norm=norm, eps_max=eps_max)
    correct = result.status != CLEAN_WRONG
    optimal = unboxed_minimal_perturbation(w, b, x, y, norm=norm)[correct]
    median = float(np.quantile(optimal.numpy(), 0.5, method="inverted_cdf")) if len(optimal) else None
    return result, median


def run_l1_path(
    dataset: Dataset,
    *,
    out_dir: Path | str,
    lambdas: Sequence[float] | None = None,
    methods: Sequence[str] = PATH_METHODS,
    store: Store | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    n_eval: int | None = None,
    norm: Norm = "linf",
    eps_max: float = 0.5,
    train_config: TrainConfig | None = None,
    sklearn_config: SklearnConfig | None = None,
) -> PathResult:
    """Fit the L1 path with each method, measure exact ε* at every point, write the figure and table.

    Args:
        dataset: any :class:`~sparank.data.Dataset` (digits, Fashion-MNIST...).
        out_dir: where ``l1_path_<dataset>.{png,svg,csv,md}`` are written (created if needed).
        lambdas: the λ grid (positive); default :func:`default_lambdas` (12 values).
        methods: a subset of ``("l1", "prox_l1", "sklearn")``.
        store: if given, every model is stored as a run of kind ``"linear"`` with its
            weights, and its ε* as a measurement.
        progress: called as ``progress(done, total, message)`` after each fitted model.
        n_eval: measure the first ``n_eval`` test inputs (None: the whole test split).
        norm: ``"linf"`` (FGSM) or ``"l2"``.
        eps_max: the largest ε considered (inputs in [0, 1]).
        train_config: training of ``l1``/``prox_l1``; default :func:`default_train_config`.
        sklearn_config: tolerance, iteration cap and training subsample of SAGA; default
            :func:`default_sklearn_config`.

    Returns:
        :class:`PathResult`; ``files`` holds the paths written.
    """
    unknown = [m for m in methods if m not in PATH_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {', '.join(PATH_METHODS)}, got {list(methods)}")
    grid = default_lambdas(dataset) if lambdas is None else [float(v) for v in lambdas]
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ValueError(f"lambdas must be positive finite numbers, got {grid}; use --lambdas 1e-4,1e-3,1e-2")
    grid = sorted(set(grid))
    config = train_config or default_train_config(dataset)
    sk_config = sklearn_config or default_sklearn_config(dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices, x_eval, y_eval = eval_subset(dataset, n_eval)
    x_train = dataset.train_x.reshape(len(dataset.train_x), -1).double()
    y_train = dataset.train_y
    total = len(methods) * len(grid)
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    fitted: dict[tuple[str, float], tuple[Tensor, Tensor, dict[str, Any]]] = {}
    for method in methods:
        if method == "sklearn":
            fits = _sklearn_path(grid, dataset, sk_config, lambda lam, s: tick(f"sklearn λ={lam:.3g} ({s:.1f} s)"))
            for lam, (w, b, c, converged, seconds) in fits.items():
                info = {"C": c, "converged": converged, "seconds": seconds, "tol": sk_config.tol, "max_iter": sk_config.max_iter}
                fitted[(method, lam)] = (w, b, {**info, "max_train": sk_config.max_train})
            continue
        for lam in grid:
            start = time.perf_counter()
            w, b, reg_config = _fit_package(method, lam, dataset, config)
            seconds = time.perf_counter() - start
            fitted[(method, lam)] = (w, b, {"regulariser": reg_config, "converged": None, "seconds": seconds})
            tick(f"{method} λ={lam:.3g} ({seconds:.1f} s)")

    points: list[PathPoint] = []
    weights: dict[tuple[str, float], tuple[Tensor, Tensor]] = {}
    eps_star: dict[tuple[str, float], Tensor] = {}
    for method in methods:
        reference: RobustnessResult | None = None  # the method's smallest λ
        for lam in grid:
            w, b, info = fitted[(method, lam)]
            result, min_median = _measure(w, b, x_eval, y_eval, norm=norm, eps_max=eps_max)
            if reference is None:
                reference = result
            summary = result.summary()
            ratio, lower = paired_ratio(result, reference)
            structure = layer_structure(w, name=f"{method} λ={lam:g}")
            point = PathPoint(
                method=method,
                lam=lam,
                sklearn_c=info.get("C"),
                converged=info["converged"],
                objective=_objective(w, b, x_train, y_train, lam),
                clean_accuracy=summary.clean_accuracy,
                sparsity=structure.sparsity,
                effective_sparsity=structure.effective_sparsity,
                l1_norm=structure.l1_norm,
                auc=summary.auc,
                auc_normalised=summary.auc_normalised,
                quantiles=summary.quantiles,
                censored_fraction=summary.censored_fraction,
                min_perturbation_median=min_median,
                paired_ratio_median=ratio,
                paired_fraction_lower=lower,
                seconds=float(info["seconds"]),
            )
            if store is not None:
                point = replace(point, run_id=_store_point(store, dataset, point, w, b, info, result, indices, config))
            points.append(point)
            weights[(method, lam)] = (w, b)
            eps_star[(method, lam)] = result.eps_star.clone()

    result_path = PathResult(
        dataset=dataset.name,
        norm=norm,
        eps_max=float(eps_max),
        n_eval=len(indices),
        lambdas=grid,
        lambda_max=lambda_max(dataset),
        points=points,
        weights=weights,
        eps_star=eps_star,
        eval_indices=indices,
    )
    stem = out / f"l1_path_{dataset.name}"
    files = write_path_table(result_path, stem)
    files.update(plot_path(result_path, stem))
    return replace(result_path, files=files)


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
        "objective": "mean cross-entropy + lambda * ||W||_1 (bias not penalised)",
    }
    if point.method == "sklearn":
        config["sklearn"] = {k: info[k] for k in ("C", "tol", "max_iter", "max_train")} | {"solver": "saga", "l1_ratio": 1.0}
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


# --------------------------------------------------------------------------- table and figure

_COLUMNS = (
    "method",
    "lam",
    "sklearn_c",
    "converged",
    "objective",
    "clean_accuracy",
    "sparsity",
    "effective_sparsity",
    "l1_norm",
    "auc",
    "auc_normalised",
    "q10",
    "q25",
    "median",
    "q75",
    "q90",
    "censored_fraction",
    "min_perturbation_median",
    "paired_ratio_median",
    "paired_fraction_lower",
    "seconds",
    "run_id",
)


def _row(point: PathPoint) -> dict[str, Any]:
    row = asdict(point)
    quantiles = row.pop("quantiles")
    row.update({"q10": quantiles["10"], "q25": quantiles["25"], "median": quantiles["50"], "q75": quantiles["75"], "q90": quantiles["90"]})
    return {k: row[k] for k in _COLUMNS}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "> ε_max"
        return f"{value:.4g}"
    return str(value)


def write_path_table(path: PathResult, stem: Path) -> dict[str, Path]:
    """``<stem>.csv`` (every column, full precision) and ``<stem>.md`` (the main columns); returns their paths."""
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_COLUMNS)
        writer.writeheader()
        for point in path.points:
            writer.writerow({k: ("" if v is None else v) for k, v in _row(point).items()})
    shown = [
        ("method", "method"),
        ("lam", "λ"),
        ("clean_accuracy", "accuracy"),
        ("sparsity", "sparsity"),
        ("effective_sparsity", "eff. sparsity"),
        ("l1_norm", "‖W‖₁"),
        ("auc", "ε* AUC"),
        ("q25", "ε* q25"),
        ("median", "ε* median"),
        ("q75", "ε* q75"),
        ("min_perturbation_median", "optimal median"),
        ("paired_ratio_median", "paired ε* ratio"),
        ("paired_fraction_lower", "ε* lower for"),
        ("censored_fraction", "censored"),
        ("converged", "converged"),
    ]
    lines = [
        f"L1 path on {path.dataset}: exact FGSM ε* ({path.norm}, ε_max = {path.eps_max}) over {path.n_eval} test inputs; "
        f"λ_max = {path.lambda_max:.4g}. ε* quantiles over correctly classified inputs; "
        "'optimal median': the median minimal perturbation of the same norm without the box; "
        "'paired ε* ratio': median over inputs both classify correctly of ε*(this model) / ε*(same method, smallest λ), "
        "and the fraction of those inputs whose ε* is lower than at the smallest λ.",

        "",
        "| " + " | ".join(title for _, title in shown) + " |",
        "|" + "|".join("---" for _ in shown) + "|",
    ]
    for point in path.points:
        row = _row(point)
        lines.append("| " + " | ".join(_fmt(row[key]) for key, _ in shown) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return {"csv": csv_path, "md": md_path}


_STYLE = {
    "l1": {"color": "#1b6ca8", "marker": "o", "label": "l1 (penalty, SGD)"},
    "prox_l1": {"color": "#d1495b", "marker": "s", "label": "prox_l1 (proximal SGD)"},
    "sklearn": {"color": "#2e933c", "marker": "^", "label": "scikit-learn SAGA"},
}


def plot_path(path: PathResult, stem: Path) -> dict[str, Path]:
    """Four panels against λ (shared log axis): ε* AUC, ε* median, clean accuracy, sparsity; PNG and SVG."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, constrained_layout=True)
    (ax_auc, ax_med), (ax_acc, ax_sp) = axes
    methods = list(dict.fromkeys(p.method for p in path.points))
    unit = "L∞" if path.norm == "linf" else "L2"
    for method in methods:
        pts = sorted((p for p in path.points if p.method == method), key=lambda p: p.lam)
        lam = [p.lam for p in pts]
        style = _STYLE[method]
        kw = {"color": style["color"], "marker": style["marker"], "markersize": 4, "linewidth": 1.6}
        ax_auc.plot(lam, [p.auc for p in pts], label=style["label"], **kw)
        med = [np.nan if p.median is None or math.isinf(p.median) else p.median for p in pts]
        ax_med.plot(lam, med, label=f"{style['label']}: FGSM ε*", **kw)
        opt = [np.nan if p.min_perturbation_median is None else p.min_perturbation_median for p in pts]
        ax_med.plot(lam, opt, color=style["color"], linestyle=":", linewidth=1.2, label=f"{method}: optimal {unit} (no box)")
        ax_acc.plot(lam, [100 * p.clean_accuracy for p in pts], label=style["label"], **kw)
        ax_sp.plot(lam, [100 * p.sparsity for p in pts], label=f"{style['label']}: exactly 0", **kw)
        ax_sp.plot(
            lam, [100 * p.effective_sparsity for p in pts], color=style["color"], linestyle="--", linewidth=1.2, label=f"{method}: |w| ≤ 10⁻³·max|w|"
        )
    ax_auc.set_title(f"ε* AUC: area under the robust-accuracy curve, ε ≤ {path.eps_max:g}")
    ax_auc.set_ylabel(f"ε* AUC ({unit}, pixel units of [0, 1])")
    ax_med.text(0.99, 0.01, "a gap: median beyond ε_max (censored)", transform=ax_med.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
    ax_med.set_title("Median ε* over correctly classified inputs")
    ax_med.set_ylabel(f"median ε* ({unit}, pixel units; log scale)")
    ax_med.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")
    ax_med.yaxis.set_major_formatter(plain)
    ax_med.yaxis.set_minor_formatter(plain)
    ax_acc.set_title("Clean accuracy")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_sp.set_title("Sparsity of W")
    ax_sp.set_ylabel("weights that are zero (%)")
    ax_sp.set_ylim(-3, 103)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("λ  (objective: mean cross-entropy + λ·‖W‖₁)")
    ax_auc.legend(fontsize=8, loc="best")
    ax_med.legend(fontsize=7, loc="best", ncol=1)
    ax_acc.legend(fontsize=8, loc="best")
    ax_sp.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"L1 path of multinomial logistic regression on {path.dataset}: exact FGSM ε* over {path.n_eval} test inputs",
        fontsize=12,
    )
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=130)
    fig.savefig(svg)
    plt.close(fig)
    return {"png": png, "svg": svg}
