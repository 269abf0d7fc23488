"""One experiment, start to end: the typed run specification and one pure ``run(spec) -> RunResult``.

A :class:`RunSpec` says everything that makes a run: dataset, architecture,
regulariser (name, strength, options, fine-tuning), training settings, seed,
and how it is measured (:class:`MeasureSpec`). :func:`run` builds the data,
the model and the regulariser, trains, computes the structure and the
metrics, and measures ε* (PROTOCOL §2-3): FGSM on the evaluation inputs, each
cross-check attack on the first ``attack_n`` of them, then the best ε* over
those and the gradient-masking flags. It does no I/O besides reading the
dataset, prints nothing and draws every random number from generators seeded
by ``spec.seed`` (:func:`sparank.train.seeded_generator`), so the same spec
gives bit-identical weights and measurements in the CLI, in a study's driver
or on a Dask worker running other runs at the same time.

:func:`record` is the one place a result is written to a store: the run under
its content key (:meth:`RunSpec.train_key`) and each measurement under its
:func:`~sparank.store.measurement_key`, each reused when already there, so a
result recorded twice is stored once. :func:`stored_state` and
:func:`measurement_keys` tell a study runner what is already done.

Example:
    >>> spec = RunSpec(dataset="digits", arch="mlp:64", regulariser="l1", strength=1e-4,
    ...                measure=MeasureSpec(n=200, attacks=("pgd",), attack_n=50))
    >>> result = run(spec)
    >>> with Store("sparank-results") as store:
    ...     run_id = record(store, result)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from torch import Tensor, nn

from sparank.attacks import FGSM, MinimalAttack, check_tol
from sparank.attacks.deepfool import DeepFool
from sparank.attacks.fmn import FMN
from sparank.attacks.pgd import PGD
from sparank.data import DATASETS, Dataset, eval_subset, load_dataset
from sparank.models import build_model, load_state, parse_spec
from sparank.regularisers import REGISTRY, Regulariser
from sparank.regularisers import get as get_regulariser
from sparank.robustness import RobustnessResult, best_of, check_measure_args, masking_flags, measure
from sparank.structure import model_structure
from sparank.train import EpochRecord, TrainConfig, accuracy, seeded_generator, train_model, training_budget

if TYPE_CHECKING:
    from typing import Self

    from sparank.store import Store

#: the cross-check attacks a run can add to FGSM (PROTOCOL §3), in the order they are measured
CROSS_CHECKS = ("pgd", "fmn", "deepfool")
#: the input box every measurement uses (PROTOCOL §1)
BOUNDS = (0.0, 1.0)


# --------------------------------------------------------------------------- the specification


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The model class at the field path ``loc`` below ``model`` (through ``X | None`` annotations), or None."""
    owner: type[BaseModel] | None = model
    for part in loc:
        field = owner.model_fields.get(part) if owner is not None else None
        annotation = field.annotation if field is not None else None
        candidates = (annotation, *getattr(annotation, "__args__", ()))
        owner = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return owner


class SpecError(ValueError):
    """A spec's validation error as one line; keeps the pydantic error so that a spec nested in another is named by its full path."""

    def __init__(self, message: str, exc: ValidationError | None = None, model: type[BaseModel] | None = None) -> None:
        super().__init__(message)  # args = (message,): it pickles (a Dask worker may raise it)
        self.exc = exc
        self.model = model


def _one_line(exc: ValidationError, model: type[BaseModel], prefix: tuple[str, ...] = ()) -> str:
    """A pydantic error as one line naming the field by its dotted path, e.g. ``train.epochs must be an integer >= 1 ..., got 0``."""
    errors = exc.errors()
    first = errors[0]
    inner = (first.get("ctx") or {}).get("error")
    if (
        isinstance(inner, SpecError) and inner.exc is not None and inner.model is not None
    ):  # a nested spec (validated by its own __init__): name its fields from here
        return _one_line(inner.exc, inner.model, (*prefix, *(str(part) for part in first["loc"])))
    loc = [str(part) for part in first["loc"]]
    path = ".".join((*prefix, *loc))
    message = str(first["msg"]).removeprefix("Value error, ").replace("\n", " ")
    kind = first["type"]
    owner = _model_at(model, loc)
    leading = re.match(r"\w+", message)
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        keys = ", ".join(parent.model_fields) if parent is not None else "?"
        where = ".".join((*prefix, *loc[:-1]))
        text = f"unknown key {path!r}; the keys{' of ' + where if where else ''} are: {keys}"
    elif kind == "missing":
        text = f"{path} is required"
    elif kind != "value_error":
        shown = repr(first.get("input"))
        text = f"{path}: {message}, got {shown[:60]}{'...' if len(shown) > 60 else ''}"
    elif owner is not None and leading is not None and leading.group() in owner.model_fields:  # a model-level check naming its field
        text = f"{path}.{message}" if path else message
    elif loc and message.startswith(loc[-1]):  # a field check naming its parameter: name it by its full path
        text = path + message[len(loc[-1]) :]
    else:
        text = f"{path}: {message}" if path else message
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


class _Spec(BaseModel):
    """A frozen, closed (unknown keys are errors) model whose validation errors are one-line ValueErrors naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(_one_line(exc, type(self)), exc, type(self)) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:  # type: ignore[override]
        """Validate a dict (e.g. read from TOML); ValueError in one line naming the field."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise SpecError(_one_line(exc, cls), exc, cls) from None


def _check_int(name: str, value: int | None, low: int, fix: str = "") -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}{f'; {fix}' if fix else ''}")


class TrainSpec(_Spec):
    """How the model is trained: :class:`~sparank.train.TrainConfig` without the seed (the run's ``seed``)."""

    epochs: int = 20  # passes over the training set (>= 1: 0 would store an untrained model)
    batch_size: int = 64
    lr: float = 1e-3  # Adam's default step; use ~0.05 for SGD
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: int) -> int:
        _check_int("epochs", v, 1, "0 would store an untrained model")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v: int) -> int:
        _check_int("batch_size", v, 1)
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"lr must be a finite number > 0, got {v} (e.g. 1e-3 for adam, 0.05 for sgd)")
        return v

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"momentum must be a finite number >= 0, got {v}")
        return v


def cross_check_attacks(names: Sequence[str], *, resolution: float, tol: float, steps: int | None, restarts: int) -> list[MinimalAttack]:
    """The cross-check attacks named (``pgd``, ``fmn``, ``deepfool``), built as ``sparank measure --attack NAME`` builds them."""
    built: list[MinimalAttack] = []
    for name in names:
        if name == "pgd":  # with steps, Madry et al.'s step of 2.5·ε/steps
            pgd_steps = {} if steps is None else {"steps": steps, "rel_stepsize": 2.5 / steps}
            built.append(PGD(restarts=restarts, fgsm_resolution=resolution, fgsm_tol=tol, **pgd_steps))
        elif name == "fmn":
            built.append(FMN(**({} if steps is None else {"steps": steps})))
        else:
            built.append(DeepFool(**({} if steps is None else {"steps": steps})))
    return built


class MeasureSpec(_Spec):
    """How a run is measured (PROTOCOL §2-3): FGSM on the evaluation inputs, cross-checks on the first ``attack_n``."""

    n: int | None = None  # evaluation inputs: the first n of the test split (None: all) ...
    eval_seed: int | None = None  # ... or n drawn with this seed (sparank.data.eval_subset)
    norm: Literal["linf", "l2"] = "linf"
    eps_max: float = 0.5  # the largest ε tried (L∞ on [0, 1] pixels; set L2's for the input size)
    resolution: float = 1e-2  # scan step along the FGSM ray (also PGD's FGSM start)
    tol: float = 1e-6  # width of the FGSM brackets
    attacks: tuple[Literal["pgd", "fmn", "deepfool"], ...] = ()  # cross-checks besides FGSM
    attack_n: int | None = 100  # the cross-checks (and best ε*, masking flags) on the first attack_n evaluation inputs (None: all)
    steps: int | None = None  # iterations of pgd / fmn / deepfool (None: each attack's default; pgd then steps by 2.5·ε/steps)
    restarts: int = 0  # pgd: extra random starts at each ε
    batch_size: int = 256  # rows per forward pass; not part of any key
    closed_form: bool = False  # FGSM ε* exactly (sparank.linear), for affine models (arch "linear") only; resolution and tol then unused
    certify: bool = False  # FGSM: prove every ε below eps_lo correct by bounds over the ray (sparank.certify), no resolution caveat
    fast: bool = False  # FGSM: scan a compiled copy of the model, every bracket checked on the model itself (PROTOCOL §2)

    @field_validator("n", "attack_n")
    @classmethod
    def _counts(cls, v: int | None, info: Any) -> int | None:
        _check_int(info.field_name, v, 1, "or None for all")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | None) -> int | None:
        _check_int("steps", v, 1, "or None for each attack's default")
        return v

    @field_validator("restarts")
    @classmethod
    def _restarts(cls, v: int) -> int:
        _check_int("restarts", v, 0, "0 runs PGD from the FGSM start only")
        return v

    @field_validator("eval_seed")
    @classmethod
    def _eval_seed(cls, v: int | None) -> int | None:
        _check_int("eval_seed", v, 0, "or None to take the first n inputs")
        return v

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"attacks names an attack twice ({', '.join(v)}); give each once")
        return v

    @model_validator(mode="after")
    def _settings(self) -> MeasureSpec:
        if self.closed_form and (self.certify or self.fast):
            raise ValueError("closed_form is already exact: certify and fast are for the scan; set them false")
        check_measure_args(norm=self.norm, eps_max=self.eps_max, resolution=self.resolution, tol=self.tol, batch_size=self.batch_size)
        check_tol(self.tol, torch.float32, BOUNDS, self.eps_max)  # every dataset is float32 pixels
        self.attack_objects()  # each attack checks its own settings
        return self

    def fgsm(self) -> FGSM:
        """The headline attack: the FGSM ray at ``resolution`` and ``tol``."""
        return FGSM(resolution=self.resolution, tol=self.tol, certify=self.certify, fast=self.fast)

    def fgsm_settings(self) -> dict[str, Any]:
        """The FGSM measurement's settings as stored and keyed: the scan's, or ``method: closed_form`` for the exact ε*."""
        return {"attack": "fgsm", "method": "closed_form"} if self.closed_form else self.fgsm().settings()

    def attack_objects(self) -> list[MinimalAttack]:
        """The cross-check attacks, built as ``sparank measure --attack NAME [--steps S] [--restarts R]`` builds them (their keys match)."""
        return cross_check_attacks(self.attacks, resolution=self.resolution, tol=self.tol, steps=self.steps, restarts=self.restarts)


class SklearnSpec(_Spec):
    """Fit by scikit-learn's SAGA instead of the training loop (:func:`sparank.linear.fit_l1_logistic`): the L1 path's third route.

    Only for ``arch = "linear"`` with ``regulariser = "l1"`` and its ``strength`` λ: SAGA minimises
    ``mean CE + λ·||W||_1`` from zero weights; ``train`` is then unused.
    """

    tol: float = 1e-4  # stop when the weights change by less than this in an epoch
    max_iter: int = 1000  # SAGA epochs at most; the run's metrics say converged = False past it
    max_train: int | None = None  # fit on the first max_train training inputs only (None: all)

    @field_validator("tol")
    @classmethod
    def _tol(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"tol must be a finite number > 0, got {v}")
        return v

    @field_validator("max_iter")
    @classmethod
    def _max_iter(cls, v: int) -> int:
        _check_int("max_iter", v, 1)
        return v

    @field_validator("max_train")
    @classmethod
    def _max_train(cls, v: int | None) -> int | None:
        _check_int("max_train", v, 2, "or None for all")
        return v


def _json_ready(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold plain JSON values (numbers, strings, lists), got {value!r}") from None


class RunSpec(_Spec):
    """Everything that makes one run: what is trained, how, with which seed, and how it is measured.

    ``dataset`` and ``arch`` are stored in canonical form (``"Fashion_MNIST"`` →
    ``"fashion-mnist"``, ``"mlp"`` → ``"mlp:300,100"``). ``regulariser``,
    ``strength``, ``options`` and ``fine_tune_epochs`` are checked by the
    regulariser itself when the spec is made. Built with ``model_copy(update=...)``
    a spec is not validated again: build a new one instead.
    """

    dataset: str
    arch: str
    regulariser: str = "none"
    strength: float | None = None  # the method's strength (None: its default; methods without one take none)
    options: dict[str, Any] = {}  # the regulariser's keyword options (layers, gate_lr, attack...)
    fine_tune_epochs: int | None = None  # epochs of fine-tuning after training, for the methods that fine-tune
    seed: int = 0  # initialisation, data order, any randomness in training: per-run torch.Generators
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec | None = MeasureSpec()  # None: train only
    sklearn: SklearnSpec | None = None  # fit by scikit-learn's SAGA instead of training (arch "linear", regulariser "l1" only)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        key = v.strip().lower().replace("_", "-")
        if key not in DATASETS:
            raise ValueError(f"dataset: unknown dataset {v!r}; choose one of {', '.join(DATASETS)}")
        return key

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        try:
            return str(parse_spec(v))
        except ValueError as exc:
            raise ValueError(f"arch: {exc}") from None

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        _check_int("seed", v, 0)
        return v

    @field_validator("fine_tune_epochs")
    @classmethod
    def _fine_tune_epochs(cls, v: int | None) -> int | None:
        _check_int("fine_tune_epochs", v, 0)
        return v

    @model_validator(mode="after")
    def _regulariser_fits(self) -> RunSpec:
        _json_ready("options", self.options)
        self.regulariser_object()
        linear = parse_spec(self.arch).arch == "linear"
        if self.measure is not None and self.measure.closed_form and not linear:
            raise ValueError(f"measure.closed_form is exact for affine models only (arch 'linear'), not {self.arch!r}; set it false")
        if self.sklearn is not None:
            if not linear or self.regulariser != "l1" or self.strength is None:
                raise ValueError(
                    f"sklearn fits arch 'linear' with regulariser 'l1' and a strength (λ), not {self.arch!r} with {self.regulariser!r}; "
                    "drop sklearn to train with the training loop"
                )
            if self.options or self.fine_tune_epochs is not None:
                raise ValueError("sklearn takes no regulariser options or fine_tune_epochs; drop them")
        return self

    def regulariser_object(self) -> Regulariser:
        """A new regulariser of this spec; ValueError naming ``regulariser``, ``strength``, ``options`` or ``fine_tune_epochs``."""
        cls = REGISTRY.get(self.regulariser)
        if cls is None:
            raise ValueError(f"regulariser: unknown regulariser {self.regulariser!r}; choose from {', '.join(REGISTRY)}")
        options = dict(self.options)
        if self.fine_tune_epochs is not None:
            if "fine_tune_epochs" in options:
                raise ValueError("fine_tune_epochs is given twice, as a field and in options; give it once, as the field")
            if "fine_tune_epochs" not in inspect.signature(cls).parameters:
                takes = ", ".join(n for n, c in REGISTRY.items() if "fine_tune_epochs" in inspect.signature(c).parameters)
                raise ValueError(f"fine_tune_epochs: regulariser {self.regulariser!r} does not fine-tune; the ones that do: {takes}")
            options["fine_tune_epochs"] = self.fine_tune_epochs
        try:
            return get_regulariser(self.regulariser, self.strength, **options)
        except ValueError as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if text.startswith("strength") or "takes no strength" in text or "needs a strength" in text:
                raise ValueError(text if text.startswith("strength") else f"strength: {text}") from None
            if text.startswith("fine_tune_epochs") and self.fine_tune_epochs is not None:
                raise ValueError(text) from None
            raise ValueError(f"options: {text}") from None

    def train_config(self) -> TrainConfig:
        """The training loop's config: ``train`` with the run's ``seed``."""
        return TrainConfig(**self.train.model_dump(), seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """What :meth:`train_key` hashes (JSON-ready): the sparank version, dataset, architecture, regulariser config, training and seed.

        The same shape as the ``sparank train`` key before :mod:`sparank.run` (``dataset``,
        ``arch``, ``train`` = ``TrainConfig.to_dict()`` with the seed, ``regulariser`` =
        its config), plus ``sparank``, the package version: a new version may train differently.
        The measure settings are not part of it (measurements have keys of their own).
        """
        import sparank

        identity = {
            "sparank": sparank.__version__,
            "dataset": self.dataset,
            "arch": self.arch,
            "train": self.train_config().to_dict(),
            "regulariser": self.regulariser_object().config(None),
        }
        if self.sklearn is not None:  # SAGA does not use the training loop: its settings and seed replace "train"
            identity.pop("train")
            identity["sklearn"] = {"solver": "saga", "l1_ratio": 1.0, **self.sklearn.model_dump(), "seed": self.seed}
        return identity

    def train_key(self) -> str:
        """The content key of the trained model (the store's run key): 20 hex digits of sha256 of :meth:`identity`."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MeasuredAttack:
    """One attack on one set of inputs, ready to store."""

    attack: str  # "fgsm", "pgd", "fmn", "deepfool" or "best"
    settings: dict[str, Any]  # what measurement_key hashes: the attack's settings + norm, eps_max, bounds, split, data_source
    indices: Tensor  # (N,) int64 indices into the test split
    result: RobustnessResult  # no directions, no adversarials
    config: dict[str, Any]  # the store's measurement config (a best record's "of" is added by record)

    def key(self, run_id: str) -> str:
        """The store's key of this measurement of run ``run_id`` (:func:`~sparank.store.measurement_key`)."""
        from sparank.store import measurement_key

        return measurement_key(run_id, self.settings, self.indices)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns: everything :func:`record` stores. Picklable (a Dask worker returns it)."""

    spec: RunSpec
    train_key: str
    config: dict[str, Any]  # the store's run config: dataset, data source, arch, input_shape, num_classes, train, regulariser, seed, spec
    history: list[dict[str, Any]]  # one EpochRecord per epoch, as dicts ([] when weights were given)
    metrics: dict[str, Any]  # test/train accuracy, n_train, n_test, budget, seconds
    structure: dict[str, Any]  # ModelStructure.to_dict()
    state_dict: dict[str, Tensor]  # CPU tensors
    measurements: tuple[MeasuredAttack, ...]  # FGSM on the eval inputs; each cross-check on the first attack_n; then "best" on those
    masking: dict[str, Any] | None  # MaskingFlags.to_dict() on the attack_n inputs; None without measurements
    seconds: float  # wall time of run(): training and measuring
    trained: bool  # False when weights were given (measure-only)


def _data_record(data: Dataset) -> dict[str, Any]:
    """Where a dataset was read from, stored with every run and measurement."""
    return {"data_source": data.source, "data_files": list(data.files)}


def _group_settings(data: Dataset, mspec: MeasureSpec) -> dict[str, Any]:
    """The settings every measurement of a run shares (part of each measurement key)."""
    return {"norm": mspec.norm, "eps_max": mspec.eps_max, "bounds": list(BOUNDS), "split": "test", "data_source": data.source}


@dataclass(frozen=True)
class _Plan:
    """The inputs of a run's measurements: the evaluation inputs and the first ``k`` of them for the cross-checks."""

    indices: Tensor  # (n,)
    x: Tensor  # (n, *shape)
    y: Tensor  # (n,)
    k: int  # cross-checks, best and masking on the first k


def _plan(data: Dataset, mspec: MeasureSpec) -> _Plan:
    total = len(data.test_y)
    if mspec.n is not None and mspec.n > total:
        raise ValueError(f"measure.n must be at most {total} (the {data.name} test set size), got {mspec.n}; or None for all")
    indices, x, y = eval_subset(data, mspec.n, seed=mspec.eval_seed)
    k = len(indices) if mspec.attack_n is None else min(mspec.attack_n, len(indices))
    return _Plan(indices, x, y, k)


def _attack_config(data: Dataset, mspec: MeasureSpec, attack: str, count: int, of_n: int) -> dict[str, Any]:
    """The store's config of one attack's measurement, as ``sparank measure`` writes it; ``first_of`` where it is a prefix of the eval set."""
    config = {
        "n": count, "eval_seed": mspec.eval_seed, "split": "test", "bounds": list(BOUNDS), "batch_size": mspec.batch_size,
        "attack": attack, "dataset": data.name, **_data_record(data),
    }  # fmt: skip
    if count < of_n:
        config["first_of"] = of_n  # the first `count` of the n evaluation inputs
    return config


def _best_config(data: Dataset, count: int) -> dict[str, Any]:
    return {"n": count, "split": "test", "bounds": list(BOUNDS), "attack": "best", "dataset": data.name, **_data_record(data)}


def _closed_form(model: nn.Module, x: Tensor, y: Tensor, mspec: MeasureSpec) -> RobustnessResult:
    """The exact FGSM ε* of an affine model (:func:`sparank.linear.model_fgsm_robustness`), as a measurement of it."""
    from sparank.linear import model_fgsm_robustness

    result = model_fgsm_robustness(model, x, y, bounds=BOUNDS, norm=mspec.norm, eps_max=mspec.eps_max, batch_size=mspec.batch_size)
    # the ray's point at ε* is at most ε* from x (the clipped coordinates moved less): ε* bounds the distance
    return dataclasses.replace(result, settings=mspec.fgsm_settings(), distance=result.eps_hi.clone())


def measure_model(
    model: nn.Module,
    data: Dataset,
    mspec: MeasureSpec,
    *,
    known: Mapping[str, RobustnessResult] | None = None,
    progress: Callable[[str], None] | None = None,
    on_inputs: Callable[[str, int, int], None] | None = None,
) -> tuple[tuple[MeasuredAttack, ...], dict[str, Any]]:
    """Measure ``model`` as ``mspec`` says: FGSM, the cross-checks, best ε* and the masking flags. No store, no printing.

    FGSM runs on the evaluation inputs (``eval_subset(data, n, seed=eval_seed)``), each
    cross-check on the first ``attack_n`` of them; best ε* (:func:`~sparank.robustness.best_of`)
    is taken over FGSM restricted to those inputs and the cross-checks, and the masking flags
    (:func:`~sparank.robustness.masking_flags`) on the same inputs.

    Args:
        model: maps ``(N, *data.input_shape)`` to logits ``(N, K)``.
        known: results already measured, by attack name (e.g. read back from a store with
            :func:`stored_results`): used instead of measuring again. Each must be of the
            planned inputs and settings.
        progress: called with a short line before each attack.
        on_inputs: called as ``on_inputs(attack, resolved, total)`` while an attack resolves inputs (a progress bar).

    Returns:
        (the measurements: FGSM, the cross-checks, then ``best``; the masking flags as a dict).
    """
    plan = _plan(data, mspec)
    check_tol(mspec.tol, plan.x.dtype, BOUNDS, mspec.eps_max)
    group = _group_settings(data, mspec)
    known = dict(known or {})
    measured: list[MeasuredAttack] = []
    for attack in [mspec.fgsm(), *mspec.attack_objects()]:
        count = len(plan.indices) if attack.name == "fgsm" else plan.k
        own = mspec.fgsm_settings() if attack.name == "fgsm" else attack.settings()
        settings = {**own, **group}
        result = known.pop(attack.name, None)
        if result is not None:
            if len(result) != count or result.settings != own or result.norm != mspec.norm or result.eps_max != mspec.eps_max:
                raise ValueError(f"known[{attack.name!r}] is not a measurement of these {count} inputs with these settings")
        elif attack.name == "fgsm" and mspec.closed_form:
            if progress is not None:
                progress(f"exact FGSM ε* on {count} inputs")
            result = _closed_form(model, plan.x, plan.y, mspec)
        else:
            if progress is not None:
                progress(f"{attack.name} on {count} inputs")
            tick = None if on_inputs is None else functools.partial(on_inputs, attack.name)
            result = measure(
                attack, model, plan.x[:count], plan.y[:count], bounds=BOUNDS, norm=mspec.norm, eps_max=mspec.eps_max,
                batch_size=mspec.batch_size, progress=tick,
            )  # fmt: skip
        measured.append(MeasuredAttack(attack.name, settings, plan.indices[:count].clone(), result.lean(),
                                       _attack_config(data, mspec, attack.name, count, len(plan.indices))))  # fmt: skip
    if known:
        raise ValueError(f"known has results of attacks this spec does not run: {', '.join(known)}")
    members = [measured[0].result.first(plan.k), *(m.result for m in measured[1:])]
    if progress is not None:
        progress(f"best ε* and masking flags on {plan.k} inputs")
    best = best_of(members)
    flags = masking_flags(model, plan.x[: plan.k], plan.y[: plan.k], members, bounds=BOUNDS, norm=mspec.norm, batch_size=mspec.batch_size)
    measured.append(MeasuredAttack("best", {"attack": "best", **group}, plan.indices[: plan.k].clone(), best, _best_config(data, plan.k)))
    return tuple(measured), flags.to_dict()


def _fit_sklearn(spec: RunSpec, data: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """``build_model('linear')`` holding SAGA's fit of ``spec`` (:class:`SklearnSpec`), and the fit's C, convergence and epochs."""
    from sparank.linear import fit_l1_logistic

    assert spec.sklearn is not None and spec.strength is not None
    n_fit = len(data.train_x) if spec.sklearn.max_train is None else min(spec.sklearn.max_train, len(data.train_x))
    w, b, info = fit_l1_logistic(
        data.train_x[:n_fit], data.train_y[:n_fit], data.num_classes, spec.strength,
        tol=spec.sklearn.tol, max_iter=spec.sklearn.max_iter, seed=spec.seed,
    )  # fmt: skip
    model = build_model(spec.arch, data.input_shape, data.num_classes, generator=seeded_generator(spec.seed, "init"))
    layer = model.get_submodule("out")  # build_model('linear') is Flatten then this one Linear
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    model.eval()
    return model, {**info, "n_fit": n_fit}


def run(
    spec: RunSpec,
    *,
    data: Dataset | None = None,
    data_dir: Path | None = None,
    weights: dict[str, Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_inputs: Callable[[str, int, int], None] | None = None,
    known: Mapping[str, RobustnessResult] | None = None,
) -> RunResult:
    """Train (unless ``weights`` are given) and measure one run. Pure: no store, no printing, no global RNG.

    Args:
        spec: the run.
        data: the dataset, already loaded (it must be ``spec.dataset``); else it is loaded
            from ``data_dir`` (:func:`~sparank.data.load_dataset`).
        weights: a state dict of ``spec.arch`` (e.g. the stored run's): training is skipped,
            only the structure, accuracies and measurements are computed (``trained=False``).
        progress: called with a short line as the run goes (an epoch, an attack).
        on_epoch: called with each epoch's record while training (a progress bar).
        on_inputs: called as ``on_inputs(attack, resolved, total)`` while measuring (a progress bar).
        known: measurements already made, by attack name (:func:`measure_model`).

    Returns:
        A :class:`RunResult`; :func:`record` stores it.

    Raises:
        ValueError: data of another dataset, weights that do not fit ``spec.arch``, ``measure.n``
            above the test-set size, a model over the parameter limit, a dataset that cannot be read.
    """
    start = time.perf_counter()
    if data is None:
        data = load_dataset(spec.dataset, data_dir=data_dir)
    elif data.name != spec.dataset:
        raise ValueError(f"data is {data.name!r} but spec.dataset is {spec.dataset!r}; pass the spec's dataset or data=None")
    if spec.measure is not None:
        _plan(data, spec.measure)  # a bad measure.n fails before anything trains
    reg = spec.regulariser_object()
    config = spec.train_config()
    history: list[EpochRecord] = []
    fit_info: dict[str, Any] = {}
    if weights is None and spec.sklearn is not None:
        if progress is not None:
            progress(f"fit {spec.arch} on {data.name} [l1 by SAGA, λ={spec.strength:g}]")
        model, fit_info = _fit_sklearn(spec, data)
    elif weights is None:
        label = f"train {spec.arch} on {data.name} [{reg.name}]"

        def epoch_done(record: EpochRecord) -> None:
            if progress is not None:
                acc = "-" if record.test_accuracy is None else f"{record.test_accuracy:.4f}"
                progress(f"{label}: epoch {record.epoch} ({record.phase}) loss {record.loss:.4f} test accuracy {acc}")
            if on_epoch is not None:
                on_epoch(record)

        model, history = train_model(spec.arch, data, config, reg, on_epoch=epoch_done)
    else:
        model = build_model(spec.arch, data.input_shape, data.num_classes, generator=seeded_generator(spec.seed, "init"))
        load_state(model, weights, source="the given weights")
        model.eval()
    train_seconds = time.perf_counter() - start
    final = history[-1] if history else None
    metrics = {
        "test_accuracy": final.test_accuracy if final else accuracy(model, data.test_x, data.test_y),
        "train_accuracy": final.train_accuracy if final else accuracy(model, data.train_x, data.train_y),
        "n_train": len(data.train_x),
        "n_test": len(data.test_x),
        "budget": training_budget(history).to_dict(),  # epochs and optimiser steps, fine-tuning included
        "seconds": train_seconds,  # training (or loading) time
        **fit_info,  # SAGA fits: C, converged, n_iter, n_fit
    }
    run_config = {
        "dataset": data.name,
        **_data_record(data),
        "arch": spec.arch,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train": config.to_dict(),
        "regulariser": reg.config(model),
        "seed": spec.seed,
        "spec": spec.model_dump(mode="json"),
    }
    structure = model_structure(model).to_dict()
    measurements: tuple[MeasuredAttack, ...] = ()
    masking = None
    if spec.measure is not None:
        measurements, masking = measure_model(model, data, spec.measure, known=known, progress=progress, on_inputs=on_inputs)
    return RunResult(
        spec=spec,
        train_key=spec.train_key(),
        config=run_config,
        history=[dataclasses.asdict(h) for h in history],
        metrics=metrics,
        structure=structure,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        measurements=measurements,
        masking=masking,
        seconds=time.perf_counter() - start,
        trained=weights is None,
    )


# --------------------------------------------------------------------------- the store


def record(store: Store, result: RunResult, *, run_id: str | None = None, replace: bool = False) -> str:
    """Write ``result`` to ``store``: the one place runs and measurements are stored. Idempotent; returns the run id.

    The run is stored with key ``result.train_key`` unless a run with that key is there
    (reused, also when another process stored it meanwhile); with ``run_id`` the
    measurements are recorded for that stored run instead (e.g. a run imported or trained
    before :mod:`sparank.run`) and no run is added. Then :func:`record_measurements`.

    Raises:
        ValueError: a measure-only result (``trained=False``) whose run is not stored and no
            ``run_id``; an unknown ``run_id``; a read-only store.
    """
    from sparank.store import DuplicateKeyError

    if run_id is not None:
        store.get_run(run_id)  # a clear error for an unknown run
    else:
        found = store.find_run(result.train_key)
        if found is not None:
            run_id = found.id
        elif not result.trained:
            raise ValueError(
                f"the result was measured on given weights and no run with its train_key {result.train_key} is stored; "
                "pass run_id= to record the measurements of a stored run"
            )
        else:
            try:
                run_id = store.add_run(
                    kind="train", config=result.config, history=result.history, metrics=result.metrics, structure=result.structure,
                    state_dict=result.state_dict, key=result.train_key,
                )  # fmt: skip
            except DuplicateKeyError as race:  # another process stored the same run meanwhile
                run_id = str(race.existing)
    record_measurements(store, run_id, result.measurements, result.masking, replace=replace)
    return run_id


def record_measurements(
    store: Store, run_id: str, measurements: Sequence[MeasuredAttack], masking: dict[str, Any] | None, *, replace: bool = False
) -> list[int]:
    """Store the measurements of run ``run_id`` (as :func:`measure_model` returns them); returns their ids, in order.

    Each is stored under its :func:`~sparank.store.measurement_key` unless one with that key
    is there (reused; ``replace`` stores it anew, as ``sparank measure --force``). The
    best-ε* record (last; with ``masking`` and ``of``, the ids of the measurements it is
    the best of, ascending as ``sparank measure`` lists them) is stored unless the stored one
    is of the same measurements, else it replaces it.
    """
    from sparank.store import DuplicateKeyError

    ids: list[int] = []
    members: list[int] = []
    for m in measurements:
        key = m.key(run_id)
        found = store.find_measurement(key)
        if m.attack == "best":
            of = sorted(members)
            if found is not None and found.config.get("of") == of:
                ids.append(found.id)
            else:
                ids.append(store.add_measurement(run_id, config={**m.config, "of": of}, result=m.result, indices=m.indices, key=key,
                                                 replace=True, extra_summary={"of": of, "masking": masking}))  # fmt: skip
            continue
        if found is not None and not replace:
            members.append(found.id)
        else:
            try:
                members.append(store.add_measurement(run_id, config=m.config, result=m.result, indices=m.indices, key=key, replace=replace))
            except DuplicateKeyError as race:  # stored meanwhile by another process
                members.append(int(race.existing))
        ids.append(members[-1])
    return ids


def stored_state(store: Store, spec: RunSpec) -> tuple[str, set[str]] | None:
    """(run id, keys of its stored measurements) if a run with ``spec.train_key()`` is stored, else None.

    A run is done when :func:`measurement_keys` of it are all in the set.
    """
    found = store.find_run(spec.train_key())
    if found is None:
        return None
    return found.id, {m.key for m in store.measurements(found.id) if m.key is not None}


def measurement_keys(run_id: str, mspec: MeasureSpec, data: Dataset) -> dict[str, str]:
    """The store keys of the measurements ``mspec`` makes of run ``run_id`` on ``data``, by attack name ("best" last)."""
    from sparank.store import measurement_key

    plan = _plan(data, mspec)
    group = _group_settings(data, mspec)
    keys = {"fgsm": measurement_key(run_id, {**mspec.fgsm_settings(), **group}, plan.indices)}
    for attack in mspec.attack_objects():
        keys[attack.name] = measurement_key(run_id, {**attack.settings(), **group}, plan.indices[: plan.k])
    keys["best"] = measurement_key(run_id, {"attack": "best", **group}, plan.indices[: plan.k])
    return keys


def stored_results(store: Store, run_id: str, mspec: MeasureSpec, data: Dataset) -> dict[str, RobustnessResult]:
    """The measurements of run ``run_id`` that ``mspec`` plans and the store already has, by attack name: :func:`run`'s ``known``."""
    found: dict[str, RobustnessResult] = {}
    for name, key in measurement_keys(run_id, mspec, data).items():
        m = store.find_measurement(key)
        if name == "best" or m is None:
            continue
        table = store.brackets(m.id)
        distance = torch.where(table.distance.isnan(), table.eps_hi, table.distance)  # stored before distances: ε* bounds it
        c = m.config
        found[name] = RobustnessResult(
            eps_lo=table.eps_lo, eps_hi=table.eps_hi, status=table.status, labels=table.label, directions=None, norm=c["norm"],
            eps_max=float(c["eps_max"]), resolution=float(c.get("resolution", 0.0)), tol=float(c.get("tol", 0.0)),
            attack=c.get("attack", name), settings=c.get("attack_settings") or {"attack": c.get("attack", name)}, distance=distance,
        )  # fmt: skip
    return found


__all__ = [
    "CROSS_CHECKS",
    "MeasureSpec",
    "MeasuredAttack",
    "RunResult",
    "RunSpec",
    "SklearnSpec",
    "SpecError",
    "TrainSpec",
    "measure_model",
    "measurement_keys",
    "record",
    "record_measurements",
    "run",
    "stored_results",
    "stored_state",
]
