"""Studies: a TOML config → a grid of runs → Dask (or serial) execution → the store (PROTOCOL §6).

A study file names datasets, architectures, seeds, the training and measure
settings, the regularisers with their strengths and the ``l2`` controls::

    name = "digits"
    datasets = ["digits"]
    archs = ["mlp:64"]
    seeds = [0, 1, 2]

    [train]                       # sparank.run.TrainSpec
    epochs = 20

    [measure]                     # sparank.run.MeasureSpec, plus reference_eps
    attacks = ["pgd"]
    attack_n = 100

    [[regulariser]]
    name = "magnitude"
    strengths = [0.5, 0.9]
    fine_tune_epochs = 3

    [controls]
    l2 = [1e-3, 1e-2]

:func:`load_config` reads it into a frozen, validated :class:`StudyConfig`
(an unknown key or a bad value is one ``ValueError`` line naming the file and
the key); :func:`expand` turns it into the grid of :class:`~sparank.run.RunSpec`
(every dense counterpart and control added, no duplicates); :func:`pairs`
says what each regularised run is compared with; :func:`run_study` runs what
the store lacks as ``dask.distributed`` tasks and records each result in the
driver as it arrives, so an interrupted study loses nothing that finished and
a rerun duplicates nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import logging
import math
import re
import time
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.markup import escape
from torch import Tensor

from sparank.compare import method_family
from sparank.data import DATASETS
from sparank.robustness import RobustnessResult
from sparank.run import MeasureSpec, RunResult, RunSpec, TrainSpec, measurement_keys, record, run, stored_results, stored_state
from sparank.store import Store

if typing.TYPE_CHECKING:
    from sparank.data import Dataset

__all__ = [
    "CONTROL_FAMILIES",
    "Controls",
    "Pair",
    "RegulariserEntry",
    "StudyConfig",
    "StudyMeasure",
    "StudyOutcome",
    "expand",
    "load_config",
    "pairs",
    "parse_config",
    "run_study",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")

# --------------------------------------------------------------------------- the config


class StudyMeasure(MeasureSpec):
    """``[measure]``: how every model of the study is measured (:class:`~sparank.run.MeasureSpec`) plus the reference ε values.

    Every field of ``MeasureSpec`` is accepted with its default there; the
    study adds only ``reference_eps``.
    """

    model_config = _FROZEN

    #: ε values at which the report gives robust accuracy A(ε) and its paired difference (each in (0, eps_max])
    reference_eps: tuple[float, ...] = (0.05, 0.1)

    def to_spec(self) -> MeasureSpec:
        """The run's ``MeasureSpec`` (everything but ``reference_eps``)."""
        return MeasureSpec(**self.model_dump(exclude={"reference_eps"}))


class RegulariserEntry(BaseModel):
    """One ``[[regulariser]]`` table: a method swept over its strengths."""

    model_config = _FROZEN

    #: the method's registered name (``sparank regularisers`` lists them)
    name: str
    #: the strengths swept (the method's own scale); leave out for a method that takes none (``none``)
    strengths: tuple[float, ...] | None = None
    #: the method's keyword options (e.g. ``{groups = "outgoing"}`` for group_lasso); its defaults otherwise
    options: dict[str, Any] = Field(default_factory=dict)
    #: epochs of fine-tuning after training, for the methods that fine-tune; None: the method's default
    fine_tune_epochs: int | None = None


class Controls(BaseModel):
    """``[controls]``: the ``l2`` models every sparse or low-rank model is also compared with (PROTOCOL §6)."""

    model_config = _FROZEN

    #: weight-decay strengths λ trained for every dataset, architecture and seed; the control of a
    #: sparse or low-rank run is, per seed, the one closest to it in clean accuracy
    #: (sparank.compare.study_comparisons), so they should span the accuracies the methods reach. Empty: none.
    l2: tuple[float, ...] = (1e-3, 1e-2, 1e-1)


class StudyConfig(BaseModel):
    """A study: the grid (datasets × archs × regularisers × strengths × seeds) and how each run is trained and measured.

    Every default lives here (the study's own) or in :class:`~sparank.run.TrainSpec` /
    :class:`~sparank.run.MeasureSpec` (a run's), each with a comment; a study
    file overrides what it needs. Frozen; unknown keys are errors.
    """

    model_config = _FROZEN

    #: the study's name (the report's title); required
    name: str
    #: datasets, each one of sparank.data.DATASETS
    datasets: tuple[str, ...] = ("digits",)
    #: model specs (sparank.models.parse_spec): "linear", "mlp:64", "cnn:16,32,128"...
    archs: tuple[str, ...] = ("mlp:64",)
    #: one model per seed for every grid point (initialisation and data order); a comparison pairs runs of the same seed
    seeds: tuple[int, ...] = (0, 1, 2)
    #: how every model is trained
    train: TrainSpec = TrainSpec()
    #: how every model is measured
    measure: StudyMeasure = StudyMeasure()
    #: the methods swept; the dense counterparts and the controls are added to the grid automatically
    regulariser: tuple[RegulariserEntry, ...] = ()
    #: the l2 controls
    controls: Controls = Controls()
    #: where the IDX files are (None: $SPARANK_DATA, then /usr/share/datasets/<name>); not part of any run's key
    data_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string such as 'digits'")
        return value

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        """Check what the types alone cannot; the message starts with the key (``regulariser[2].strengths[1]: ...``)."""
        from sparank.models import parse_spec
        from sparank.regularisers import get

        for key, values in (("datasets", self.datasets), ("archs", self.archs), ("seeds", self.seeds)):
            if not values:
                raise ValueError(f"{key}: must list at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: {list(values)} lists a value twice; list each once")
        for i, name in enumerate(self.datasets):
            if name not in DATASETS:
                raise ValueError(f"datasets[{i}]: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        for i, arch in enumerate(self.archs):
            try:
                parse_spec(arch)
            except ValueError as exc:
                raise ValueError(f"archs[{i}]: {_one_line(exc)}") from None
        for i, seed in enumerate(self.seeds):
            if seed < 0:
                raise ValueError(f"seeds[{i}]: must be >= 0, got {seed}")
        for i, eps in enumerate(self.measure.reference_eps):
            if not (math.isfinite(eps) and 0 < eps <= self.measure.eps_max):
                raise ValueError(f"measure.reference_eps[{i}]: {eps} must be in (0, eps_max = {self.measure.eps_max}]")
        for i, entry in enumerate(self.regulariser):
            where = f"regulariser[{i}]"
            try:
                cls = _registered(entry.name)
            except ValueError as exc:
                raise ValueError(f"{where}.name: {_one_line(exc)}") from None
            if cls.strength_meaning is None and entry.strengths is not None:
                raise ValueError(f"{where}.strengths: {entry.name!r} takes no strength; leave strengths out")
            if cls.strength_meaning is not None and not entry.strengths:
                raise ValueError(
                    f"{where}.strengths: {entry.name!r} needs a list of strengths ({cls.strength_meaning}), e.g. [{cls.default_strength}]"
                )
            if entry.fine_tune_epochs is not None and "fine_tune_epochs" not in cls.options():
                takes = ", ".join(n for n, c in _registry().items() if "fine_tune_epochs" in c.options())
                raise ValueError(f"{where}.fine_tune_epochs: {entry.name!r} does not fine-tune; the methods that do: {takes}")
            if "fine_tune_epochs" in entry.options:
                raise ValueError(f"{where}.options: give fine_tune_epochs as its own key, not inside options")
            strengths = entry.strengths if entry.strengths is not None else (None,)
            if len(set(strengths)) != len(strengths):
                raise ValueError(f"{where}.strengths: {list(strengths)} lists a strength twice; list each once")
            for j, strength in enumerate(strengths):
                try:
                    get(entry.name, strength, **_options(entry))
                except (ValueError, TypeError) as exc:  # the method's own check; TypeError: an option of the wrong kind
                    text = _one_line(exc)
                    key = next((k for k in ("strength", "fine_tune_epochs") if text.startswith(k)), "options")
                    key = f"strengths[{j}]" if key == "strength" else key
                    raise ValueError(f"{where}.{key}: {text}") from None
        if len(set(self.controls.l2)) != len(self.controls.l2):
            raise ValueError(f"controls.l2: {list(self.controls.l2)} lists a strength twice; list each once")
        for j, strength in enumerate(self.controls.l2):
            try:
                get("l2", strength)
            except ValueError as exc:
                raise ValueError(f"controls.l2[{j}]: {_one_line(exc)}") from None
        return self

    def resolved(self) -> dict[str, Any]:
        """The whole config with every default filled in, as JSON-ready data (stored with every run of the study)."""
        return self.model_dump(mode="json")


def _registry() -> dict[str, Any]:
    from sparank.regularisers import REGISTRY

    return REGISTRY


def _registered(name: str) -> Any:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown regulariser {name!r}; choose from {', '.join(registry)} (see `sparank regularisers`)")
    return registry[name]


def _options(entry: RegulariserEntry) -> dict[str, Any]:
    """The keyword options a method is built with: its ``options`` plus ``fine_tune_epochs`` when given."""
    extra = {} if entry.fine_tune_epochs is None else {"fine_tune_epochs": entry.fine_tune_epochs}
    return {**entry.options, **extra}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _field_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``tuple[X, ...]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _field_model(arg)
            if found is not None:
                return found
    return None


def _where(loc: Sequence[int | str]) -> str:
    """A pydantic location as the key a user wrote: ``("regulariser", 2, "strengths", 1)`` → ``regulariser[2].strengths[1]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The pydantic model a location inside a study names (``("train",)`` → TrainSpec), or None."""
    model: type[BaseModel] | None = StudyConfig
    for part in loc:
        if isinstance(part, str):
            field = model.model_fields.get(part) if model is not None else None
            model = _field_model(field.annotation) if field is not None else None
    return model


def _unknown_key(source: str, loc: Sequence[int | str]) -> str:
    """``source: train.epoch: unknown key; did you mean 'epochs'? [train] takes epochs, ...``."""
    model = _model_at(loc[:-1])
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    table = f"[{_where(loc[:-1])}]" if loc[:-1] else "a study"
    return f"{source}: {_where(loc)}: unknown key; {hint}{table} takes {', '.join(known)}"


def _error_line(source: str, error: Any) -> str:
    """One line for the first pydantic error: ``source: key: what is wrong``."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return _unknown_key(source, loc)
    message = _one_line(ValueError(str(error["msg"]).removeprefix("Value error, ")))
    where = _where(loc)
    if not loc:  # a check of the whole config: its message starts with the key
        return f"{source}: {message}"
    if error["type"] == "value_error":
        # a nested spec (TrainSpec, MeasureSpec) reports its own errors in one line that starts with its key
        unknown = re.match(r"unknown key '([\w.]+)'", message)
        if unknown is not None and _model_at(loc) is not None:
            return _unknown_key(source, (*loc, *unknown.group(1).split(".")))
        head = re.match(r"[A-Za-z_][\w.]*", message)
        model = _model_at(loc)
        if head is not None and model is not None and head.group(0).split(".")[0] in model.model_fields:
            key = re.sub(r"[.](\d+)", r"[\1]", head.group(0))  # attacks.0 -> attacks[0]
            return f"{source}: {where}.{key}{message[head.end() :]}"
        if message.startswith(str(loc[-1])):  # the check named its field: name it by its whole path
            return f"{source}: {where}{message[len(str(loc[-1])) :]}"
    got = error.get("input")
    shown = f", got {_short(got)}" if error["type"] not in ("missing", "value_error") and not isinstance(got, dict) else ""
    return f"{source}: {where}: {message}{shown}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> StudyConfig:
    """A :class:`StudyConfig` from parsed TOML data; a bad key or value is one ``ValueError`` line starting with ``source``."""
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_error_line(source, exc.errors()[0])) from None


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate the study file at ``path``.

    Raises:
        ValueError: one line naming the file and what is wrong: unparsable
            TOML (with its line and column), an unknown key (with the keys its
            table takes), a bad value (with the key, e.g.
            ``configs/x.toml: regulariser[2].strengths[0]: ...``).
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {_one_line(exc)}") from None
    return parse_config(data, source=str(path))


# --------------------------------------------------------------------------- the grid


#: the families (sparank.compare.method_family) whose runs are also compared with an l2 control
#: (PROTOCOL §6: "each sparse or low-rank model")
CONTROL_FAMILIES = ("sparse", "low-rank")


def _counterpart_epochs(spec: RunSpec) -> int | None:
    """``fine_tune_epochs`` of the budget-matched dense counterpart of ``spec`` (None: plain ``none``)."""
    from sparank.regularisers import counterpart

    epochs = counterpart(spec.regulariser_object()).extra_epochs
    return epochs if epochs > 0 else None


def _dense(config: StudyConfig, dataset: str, arch: str, seed: int, fine_tune_epochs: int | None = None) -> RunSpec:
    return RunSpec(
        dataset=dataset, arch=arch, regulariser="none", fine_tune_epochs=fine_tune_epochs, seed=seed,
        train=config.train, measure=config.measure.to_spec(),
    )  # fmt: skip


def _control(config: StudyConfig, dataset: str, arch: str, seed: int, strength: float) -> RunSpec:
    return RunSpec(
        dataset=dataset, arch=arch, regulariser="l2", strength=strength, seed=seed, train=config.train, measure=config.measure.to_spec()
    )


def _regularised(config: StudyConfig) -> Iterator[RunSpec]:
    """Every run the config's ``[[regulariser]]`` tables ask for, in order: dataset, arch, table, strength, seed."""
    measure = config.measure.to_spec()
    for dataset in config.datasets:
        for arch in config.archs:
            for entry in config.regulariser:
                for strength in entry.strengths if entry.strengths is not None else (None,):
                    for seed in config.seeds:
                        yield RunSpec(
                            dataset=dataset, arch=arch, regulariser=entry.name, strength=strength, options=dict(entry.options),
                            fine_tune_epochs=entry.fine_tune_epochs, seed=seed, train=config.train, measure=measure,
                        )  # fmt: skip


def expand(config: StudyConfig) -> list[RunSpec]:
    """The study's grid: every run to train and measure, each once (by ``train_key``), in a fixed order.

    For each dataset and architecture: per seed the dense run (``none``),
    then the budget-matched dense counterparts of the methods that fine-tune
    (``none`` with their ``fine_tune_epochs``, see
    :func:`sparank.regularisers.counterpart`), then the ``l2`` controls at
    ``controls.l2``; then the regularised runs (table, strength, seed). A run
    asked for twice (e.g. ``l2`` listed as a method at a control strength) is
    kept once, where it first appears.
    """
    specs: list[RunSpec] = []
    seen: set[str] = set()

    def add(spec: RunSpec) -> None:
        key = spec.train_key()
        if key not in seen:
            seen.add(key)
            specs.append(spec)

    regularised = list(_regularised(config))
    for dataset in config.datasets:
        for arch in config.archs:
            for seed in config.seeds:
                add(_dense(config, dataset, arch, seed))
                for spec in regularised:
                    if (spec.dataset, spec.arch, spec.seed) == (dataset, arch, seed) and spec.regulariser != "none":
                        add(_dense(config, dataset, arch, seed, _counterpart_epochs(spec)))
                for strength in config.controls.l2:
                    add(_control(config, dataset, arch, seed, strength))
    for spec in regularised:
        add(spec)
    return specs


@dataclass(frozen=True)
class Pair:
    """What one regularised run is compared with (PROTOCOL §6).

    ``counterpart`` is the dense run of the same dataset, architecture, seed
    and training, with the same training budget (``none`` fine-tuned for the
    method's extra epochs, if any). ``controls`` are the ``l2`` runs of the
    same dataset, architecture, seed and training, one per ``controls.l2``
    strength, for a sparse or low-rank method (empty otherwise). The control
    a comparison uses is chosen from them after training, by
    :func:`sparank.compare.study_comparisons`: per seed, the one closest in
    clean accuracy (ties: the smaller strength).
    """

    spec: RunSpec
    counterpart: RunSpec
    controls: tuple[RunSpec, ...]


def pairs(config: StudyConfig, specs: Sequence[RunSpec] | None = None) -> list[Pair]:
    """For each regularised run of ``specs`` (default: :func:`expand`), its counterpart and its control candidates.

    A regularised run is one a ``[[regulariser]]`` table asks for whose method
    is not ``none`` (an ``l2`` control is one only where a table lists ``l2``
    at that strength). Every spec in a pair is in ``specs``; a ValueError says
    which is missing if not.
    """
    specs = expand(config) if specs is None else list(specs)
    present = {spec.train_key() for spec in specs}
    asked = {spec.train_key() for spec in _regularised(config) if spec.regulariser != "none"}
    found: list[Pair] = []
    for spec in specs:
        if spec.train_key() not in asked:
            continue
        dense = _dense(config, spec.dataset, spec.arch, spec.seed, _counterpart_epochs(spec))
        controls = tuple(_control(config, spec.dataset, spec.arch, spec.seed, s) for s in config.controls.l2)
        if method_family(spec.regulariser) not in CONTROL_FAMILIES:
            controls = ()
        for other in (dense, *controls):
            if other.train_key() not in present:
                raise ValueError(
                    f"the grid lacks {other.regulariser} (seed {other.seed}) that {spec.regulariser} is compared with; use expand(config)"
                )
        found.append(Pair(spec=spec, counterpart=dense, controls=controls))
    return found


# --------------------------------------------------------------------------- execution


@dataclass(frozen=True)
class StudyOutcome:
    """What :func:`run_study` did. Keys are ``RunSpec.train_key()``; every tuple follows the grid's order."""

    specs: tuple[RunSpec, ...]  # the grid (expand(config))
    run_ids: dict[str, str]  # train key -> run id, for every run of the grid now complete in the store
    skipped: tuple[str, ...]  # already complete in the store before this call
    recorded: tuple[str, ...]  # run (or measured) and recorded by this call
    failed: dict[str, str]  # train key -> "ExceptionType: first line" for a run that raised
    seconds: float  # wall time of the whole call

    @property
    def ok(self) -> bool:
        """True when every run of the grid is complete in the store."""
        return not self.failed and len(self.run_ids) == len(self.specs)


class _Todo(typing.NamedTuple):
    """A run the store lacks: train it (``weights`` None), or measure a stored run from its weights, reusing what is stored (``known``)."""

    spec: RunSpec
    weights: dict[str, Tensor] | None = None
    known: dict[str, RobustnessResult] | None = None


def _needed(store: Store, spec: RunSpec, data_dir: str | None) -> tuple[str | None, _Todo | None]:
    """Where ``spec`` stands in the store: ``(run id, None)`` complete; ``(run id, todo)`` stored but missing
    measurements; ``(None, todo)`` not stored."""
    state = stored_state(store, spec)
    if state is None:
        return None, _Todo(spec)
    run_id, keys = state
    if spec.measure is None:
        return run_id, None
    data = _dataset(spec.dataset, data_dir)
    if set(measurement_keys(run_id, spec.measure, data).values()) <= keys:
        return run_id, None
    return run_id, _Todo(spec, store.load_weights(run_id), stored_results(store, run_id, spec.measure, data))


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None) -> Dataset:
    """The dataset, read once per process (a worker runs many tasks)."""
    from sparank.data import load_dataset

    return load_dataset(name, data_dir=data_dir)


def _task(todo: _Todo, threads: int, data_dir: str | None) -> RunResult:
    """One run, as a Dask task (or serially): torch told ``threads``, the dataset read once per process."""
    torch.set_num_threads(threads)
    return run(todo.spec, data=_dataset(todo.spec.dataset, data_dir), weights=todo.weights, known=todo.known)


def _with_study(result: RunResult, config: StudyConfig) -> RunResult:
    """``result`` with the resolved study config added to its stored run config (under ``"study"``)."""
    return dataclasses.replace(result, config={**result.config, "study": config.resolved()})


def _default_workers(threads_per_worker: int) -> int:
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // threads_per_worker)


def _label(spec: RunSpec) -> str:
    strength = "" if spec.strength is None else f" {spec.strength:g}"
    tune = "" if spec.fine_tune_epochs is None else f" +{spec.fine_tune_epochs}ft"
    return f"{spec.dataset} {spec.arch} {spec.regulariser}{strength}{tune} seed {spec.seed}"


class _Display:
    """The progress bar: runs done / total, running, left, and the mean time per run."""

    def __init__(self, total: int, done: int, *, enabled: bool, name: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.total, self.done, self.running, self.failed = total, done, 0, 0
        self.note = ""  # shown instead of the counts while the cluster starts
        self.seconds: list[float] = []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )  # fmt: skip
        self.task = self.progress.add_task(f"study {name}", total=total, completed=done, state="")
        self.refresh()

    def refresh(self) -> None:
        per_run = f" · {sum(self.seconds) / len(self.seconds):.1f} s/run" if self.seconds else ""
        failures = f" · [red]{self.failed} failed[/]" if self.failed else ""
        left = self.total - self.done - self.failed - self.running
        state = self.note or f"running {self.running} · left {left}{per_run}{failures}"
        self.progress.update(self.task, completed=self.done, state=state)

    def line(self, text: str) -> None:
        """Print ``text`` (rich markup) above the bar."""
        self.progress.console.print(text, highlight=False)


#: called by an executor when a run ends: (spec, its result or None, the exception it raised or None)
_Finish = Callable[[RunSpec, "RunResult | None", "BaseException | None"], None]


def run_study(
    config: StudyConfig,
    store: Store,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    progress: bool = True,
    on_record: Callable[[RunSpec, str], None] | None = None,
) -> StudyOutcome:
    """Run every run of ``expand(config)`` the store lacks, recording each as it finishes.

    Runs already stored with all their measurements are skipped; a stored
    run missing measurements is measured from its stored weights. The rest
    run as ``dask.distributed`` tasks that return a ``RunResult``; only this
    process (the driver) writes the store, with :func:`sparank.run.record`,
    as each result arrives (``as_completed``), so an interrupted study
    (Ctrl-C, a killed driver or worker) keeps everything recorded and a rerun
    does only what is left. A worker that dies mid-run is replaced by its
    nanny and the scheduler runs its task again elsewhere.

    Args:
        config: the study.
        store: the results store, open for writing.
        scheduler: ``"tcp://HOST:PORT"`` of a running Dask scheduler; None
            starts a ``LocalCluster`` of ``workers`` processes for this call.
        workers: worker processes of the local cluster (default: the cores
            this process may use // ``threads_per_worker``); ``0`` runs
            serially in this process, without Dask (for debugging).
        threads_per_worker: torch threads per run (``torch.set_num_threads``
            at the start of each task). A local worker gets this many Dask
            threads and one run at a time (a ``run`` resource); on an
            existing cluster start the workers with ``--nthreads 1`` so that
            each worker thread runs one run with this many torch threads.
        progress: show the progress bar (and a line per failed run).
        on_record: called with each spec and its run id after it is recorded.

    Returns:
        A :class:`StudyOutcome`. A run that raised is in ``failed`` and the
        others still run: check ``outcome.ok``.
    """
    if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be an integer >= 1, got {threads_per_worker!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0 (0: serial, without Dask), got {workers!r}")
    if scheduler is not None and workers is not None:
        raise ValueError("workers sizes a local cluster; with scheduler the cluster's own workers run the study: leave workers out")
    start = time.perf_counter()
    for dataset in config.datasets:  # readable, and large enough for the measure, before anything starts
        size = len(_dataset(dataset, config.data_dir).test_y)
        if config.measure.n is not None and config.measure.n > size:
            raise ValueError(
                f"measure.n must be at most {size} (the {dataset} test set size), got {config.measure.n}; or leave it out for all"
            )
    specs = expand(config)
    run_ids: dict[str, str] = {}
    todo: list[_Todo] = []
    skipped: list[str] = []
    for spec in specs:
        run_id, needed = _needed(store, spec, config.data_dir)
        if needed is None:
            assert run_id is not None  # complete means stored
            run_ids[spec.train_key()] = run_id
            skipped.append(spec.train_key())
        else:
            todo.append(needed)
    recorded: list[str] = []
    failed: dict[str, str] = {}
    display = _Display(len(specs), len(skipped), enabled=progress, name=config.name)

    def finish(spec: RunSpec, result: RunResult | None, error: BaseException | None) -> None:
        key = spec.train_key()
        if result is None:
            failed[key] = f"{type(error).__name__}: {_one_line(error)}" if error is not None else "no result"
            display.failed += 1
            display.line(f"[red]failed[/]: {escape(f'{_label(spec)}: {failed[key]}')}")
        else:
            run_ids[key] = record(store, _with_study(result, config))
            recorded.append(key)
            display.done += 1
            display.seconds.append(result.seconds)
            if on_record is not None:
                on_record(spec, run_ids[key])
        display.refresh()

    with display.progress:
        if todo and workers == 0:
            _run_serially(todo, config, threads_per_worker, finish, display)
        elif todo:
            _run_on_dask(todo, config, scheduler, workers, threads_per_worker, finish, display)
    order = {spec.train_key(): i for i, spec in enumerate(specs)}
    return StudyOutcome(
        specs=tuple(specs),
        run_ids=dict(sorted(run_ids.items(), key=lambda kv: order[kv[0]])),
        skipped=tuple(skipped),
        recorded=tuple(sorted(recorded, key=order.__getitem__)),
        failed=dict(sorted(failed.items(), key=lambda kv: order[kv[0]])),
        seconds=time.perf_counter() - start,
    )


def _run_serially(todo: list[_Todo], config: StudyConfig, threads: int, finish: _Finish, display: _Display) -> None:
    """Each run in turn in this process (``workers=0``): the debugging path, same recording as on Dask."""
    before = torch.get_num_threads()
    try:
        for item in todo:
            display.running = 1
            display.refresh()
            try:
                result = _task(item, threads, config.data_dir)
            except Exception as exc:  # reported in the outcome; the other runs still run
                display.running = 0
                finish(item.spec, None, exc)
            else:
                display.running = 0
                finish(item.spec, result, None)
    finally:
        torch.set_num_threads(before)


#: glibc's malloc settings in the local cluster's worker processes. Dask's nanny sets MALLOC_TRIM_THRESHOLD_ to 64 KiB
#: there, and any explicit trim threshold also turns off glibc's adaptive mmap threshold, so every tensor above 128 KiB
#: is mapped afresh: 1.3 million page faults and 1.7x the time of a plain process for a Fashion-MNIST MLP epoch (1.4x
#: for a digits run). A 32 MiB mmap threshold with a 128 MiB trim threshold gives workers a plain process's speed.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": 128 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None, threads: int) -> Iterator[tuple[Any, dict[str, float] | None]]:
    """A Dask client and the resources each task asks for: connected to ``scheduler``, or to a LocalCluster started and closed here."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler, timeout=30) as client:
            yield client, None
        return
    n = workers if workers is not None else _default_workers(threads)
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_MALLOC.items()}
    with dask.config.set(environ):  # read by the nannies at each worker's (re)start
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads,
            processes=True,
            resources={"run": 1},
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        with cluster, Client(cluster) as client:
            yield client, {"run": 1}


def _run_on_dask(
    todo: list[_Todo], config: StudyConfig, scheduler: str | None, workers: int | None, threads: int, finish: _Finish,
    display: _Display,
) -> None:  # fmt: skip
    """Submit every run as a task; record each result in this process as it completes."""
    from distributed import as_completed

    display.note = "starting Dask workers" if scheduler is None else f"connecting to {scheduler}"
    display.refresh()
    with _client(scheduler, workers, threads) as (client, resources):
        display.note = ""
        futures = {  # priority: the grid's order (dense runs first), not Dask's default of newest first
            client.submit(
                _task,
                item,
                threads,
                config.data_dir,
                key=f"sparank-run-{item.spec.train_key()}",
                resources=resources,
                priority=len(todo) - i,
            ): item.spec
            for i, item in enumerate(todo)
        }
        display.running = min(len(futures), _slots(client, resources))
        display.refresh()
        pending = len(futures)
        try:
            for future in as_completed(futures):
                spec = futures[future]
                pending -= 1
                display.running = min(pending, _slots(client, resources))
                if future.status == "finished":
                    finish(spec, future.result(), None)
                else:
                    finish(spec, None, future.exception())
                future.release()
        finally:
            client.cancel([f for f in futures if not f.done()])


def _slots(client: Any, resources: dict[str, float] | None) -> int:
    """How many runs the cluster runs at once: one per worker with the ``run`` resource, else one per worker thread."""
    nthreads = client.nthreads()
    return len(nthreads) if resources else sum(nthreads.values())
