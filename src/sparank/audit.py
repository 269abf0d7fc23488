"""Audit a user's own trained model: how much robustness does compressing it cost? (issue 11)

:func:`audit` takes any ``nn.Module`` that maps a batch to logits, compresses *copies* of it
(:mod:`sparank.compress`: per-layer and global magnitude pruning, structured pruning,
SVD rank truncation, each at several levels, optionally fine-tuned), and measures the
original and every copy on the same inputs as a study measures a run (PROTOCOL §2–4): clean
accuracy, FGSM ε* with its summary, the cross-check attacks and best ε* on the first
``attack_n`` inputs, the gradient-masking flags and the structure achieved. Each copy is
compared with the original by the studies' paired comparison (PROTOCOL §6:
:func:`~sparank.compare.paired_comparison`, verdicts Holm-corrected across the audit's
compressions by :func:`~sparank.compare.verdicts`).

One model, not several seeds: the comparison's two-stage bootstrap then has a single
group, so its intervals cover the choice of *inputs* only, not the training randomness of
the model; a verdict says what compressing *this* model does on inputs like these.

The user's model and tensors are never modified: the audit works on deep copies.

With a results store (``store=``), the original and every copy are recorded as runs of kind
``"audit"`` (weights as safetensors, config, structure, clean accuracy) with their measurements
(FGSM, the cross-checks, best ε* with the masking flags), each as soon as it is done and under a
content key: the model (its class or spec, the source file of its class, the sha256 of its
state dict), the compression and the fine-tuning (with the sha256 of the training data) key a run;
the run, the attack and its settings and the sha256 of the audit inputs key a measurement
(:func:`sparank.store.measurement_key`, stored by :func:`sparank.run.record_measurements`). An
interrupted audit run again measures only what is missing and gives the same result; a changed
model, compression or setting never reuses a record. The result is then built from what the
store holds, so an audit resumed and one run in one go are the same.

:func:`load_model` builds a model for the command line from a package spec (``mlp:300,100``)
or an import path ``package.module:factory`` (the convention of uvicorn), and loads its
weights with safetensors only.

Example:
    >>> result = sparank.audit(model, x_test, y_test, bounds=(0, 1), train_data=(x_train, y_train), fine_tune_epochs=2)
    >>> print(result.answer())
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import math
import re
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from sparank.attacks import FGSM, MinimalAttack, as_tensor, check_inputs, check_tol
from sparank.compare import DEFAULT_N_BOOT, LESS_ROBUST, PairedComparison, Verdict, paired_comparison, verdicts
from sparank.compress import (
    DEFAULT_RANK_FRACTIONS,
    DEFAULT_SPARSITIES,
    FAMILIES,
    Compression,
    FineTune,
    compress,
    compressions,
)
from sparank.models import weight_layers
from sparank.robustness import CLEAN_WRONG, RobustnessResult, best_of, check_measure_args, masking_flags, measure
from sparank.run import CROSS_CHECKS, cross_check_attacks
from sparank.structure import LayerStructure, ModelStructure, model_structure

if TYPE_CHECKING:
    from sparank.store import MeasurementRecord, Store

#: ε of the robust-accuracy differences, as fractions of eps_max (as the study report's default)
REFERENCE_FRACTIONS = (0.05, 0.1, 0.2)
#: the family-wise error rate of the verdicts
ALPHA = 0.05
#: the store's kind of an audit's runs (the original and each compressed copy)
AUDIT_KIND = "audit"


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModelAudit:
    """The measurements of one model of an audit: the original or one compressed copy."""

    compression: Compression | None  # None: the original
    fgsm: RobustnessResult  # on every audit input (no directions)
    cross_checks: tuple[RobustnessResult, ...]  # each on the first attack_n inputs
    best: RobustnessResult | None  # best ε* over FGSM and the cross-checks on the first attack_n inputs (None without cross-checks)
    masking: dict[str, Any] | None  # MaskingFlags.to_dict() on the first attack_n inputs (with the cross-checks there are)
    structure: ModelStructure
    seconds: float  # compressing, fine-tuning and measuring in this call (with a store: reading back what it holds)

    @property
    def label(self) -> str:
        return "original" if self.compression is None else self.compression.label

    @property
    def clean_accuracy(self) -> float:
        """Fraction of the audit inputs classified correctly."""
        return float((self.fgsm.status != int(CLEAN_WRONG)).double().mean())

    @property
    def masked(self) -> bool | None:
        return None if self.masking is None else bool(self.masking.get("masked"))


@dataclass(frozen=True)
class CompressionComparison:
    """One compressed copy against the original (PROTOCOL §6), with its verdicts."""

    compression: Compression
    fgsm: PairedComparison  # ε* along the FGSM ray, every audit input
    fgsm_verdict: Verdict
    best: PairedComparison | None  # best ε* on the first attack_n inputs, where cross-checks ran
    best_verdict: Verdict | None
    accuracy_change: float  # clean accuracy copy − original, on the audit inputs
    acceptable: bool  # no verdict "less robust" and accuracy_change >= −accuracy_tolerance


@dataclass(frozen=True)
class FamilyAnswer:
    """For one compression family: the strongest acceptable setting and the next stronger one."""

    family: str
    chosen: CompressionComparison | None  # the strongest acceptable setting (None: none is)
    next_stronger: CompressionComparison | None  # the next stronger setting audited (None: chosen is the strongest)
    layers: tuple[str, ...] | None = None  # the layers its compressions name (None: the family's default layers)


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit` returns: the original's and every copy's measurements, and each comparison."""

    original: ModelAudit
    compressed: tuple[ModelAudit, ...]  # in the order of comparisons
    comparisons: tuple[CompressionComparison, ...]
    settings: dict[str, Any]  # norm, eps_max, resolution, tol, bounds, n, attack_n, attacks, fine-tuning, accuracy_tolerance, ...
    seconds: float
    inputs_note: str = ""  # where the inputs came from (the CLI: dataset and split)
    model_note: str = ""  # what the model is (the CLI: --model and --weights)
    per_family: tuple[FamilyAnswer, ...] = field(default=())
    run_ids: tuple[str, ...] = ()  # with a store: the runs of the original and of each copy, in the order of `compressed`
    recorded: tuple[int, ...] = ()  # with a store: the measurements this call measured and stored (the others were read back)

    def answer(self) -> str:
        """One paragraph: per family, the strongest setting not significantly less robust and within the accuracy tolerance."""
        return answer_paragraph(self)


# --------------------------------------------------------------------------- the audit


def _measure_one(
    model: nn.Module, compression: Compression | None, x: Tensor, y: Tensor, *, k: int, attacks: Sequence[MinimalAttack],
    bounds: tuple[float, float], norm: str, eps_max: float, resolution: float, tol: float, certify: bool, batch_size: int, start: float,
) -> ModelAudit:  # fmt: skip
    fgsm_attack = FGSM(resolution=resolution, tol=tol, certify=certify)
    fgsm = measure(fgsm_attack, model, x, y, bounds=bounds, norm=norm, eps_max=eps_max, batch_size=batch_size).lean()  # type: ignore[arg-type]
    checks = tuple(
        measure(a, model, x[:k], y[:k], bounds=bounds, norm=norm, eps_max=eps_max, batch_size=batch_size).lean()  # type: ignore[arg-type]
        for a in attacks
    )
    members = [fgsm.first(k), *checks]
    best = best_of(members) if checks else None
    masking = masking_flags(model, x[:k], y[:k], members, bounds=bounds, norm=norm, batch_size=batch_size).to_dict()  # type: ignore[arg-type]
    return ModelAudit(compression, fgsm, checks, best, masking, model_structure(model), time.perf_counter() - start)


def _compare(
    copy_: RobustnessResult, original: RobustnessResult, *, eps_max: float, reference_eps: Sequence[float], n_boot: int, seed: int
) -> PairedComparison:
    return paired_comparison(
        [copy_.eps_hi.numpy()], [original.eps_hi.numpy()], eps_max=eps_max, rng=np.random.default_rng(seed),
        reg_correct=[(copy_.status != int(CLEAN_WRONG)).numpy()], dense_correct=[(original.status != int(CLEAN_WRONG)).numpy()],
        reference_eps=reference_eps, n_boot=n_boot,
    )  # fmt: skip


# --------------------------------------------------------------------------- the results store


def tensors_sha256(named: Mapping[str, Tensor]) -> str:
    """sha256 of named tensors: each name, dtype, shape and raw bytes, in name order (the content of a state dict or of data)."""
    digest = hashlib.sha256()
    for name in sorted(named):
        t = named[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _source_sha256(model: nn.Module) -> str | None:
    """sha256 of the source file that defines the model's class, or None where there is none (a class made at run time)."""
    try:
        path = inspect.getsourcefile(type(model))
    except (TypeError, OSError):
        return None
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _content_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Recorder:
    """What an audit needs to record its models in a store and find them again: the keys' ingredients."""

    store: Store
    model: dict[str, Any]  # the model's identity: sparank version, name, class, source sha256, state-dict sha256
    group: dict[str, Any]  # what every measurement key holds besides the attack: norm, eps_max, bounds, sha256 of the inputs
    indices: Tensor  # (N,) where each audit input comes from (stored with its brackets)
    fine_tune: dict[str, Any] | None  # the fine-tuning of every copy, with the sha256 of its training data; None: none
    context: dict[str, Any]  # more for each run's config (the CLI: weights file and its sha256, dataset); not in any key
    batch_size: int

    def run_key(self, compression: Compression | None) -> str:
        """The content key of the original (``None``) or of one compressed copy."""
        return _content_key({"kind": AUDIT_KIND, "model": self.model, **self._what(compression)})

    def _what(self, compression: Compression | None) -> dict[str, Any]:
        if compression is None:
            return {"compression": None, "fine_tune": None}
        layers = None if compression.layers is None else list(compression.layers)
        return {"compression": {"family": compression.family, "level": float(compression.level), "layers": layers},
                "fine_tune": self.fine_tune}  # fmt: skip

    def run_config(self, compression: Compression | None, original_run: str | None) -> dict[str, Any]:
        """The stored run's config: the model, the compression and fine-tuning, the label, and the context."""
        config = {**self.context, "audit": "original" if compression is None else compression.label, "arch": self.model["name"],
                  **self.model, **self._what(compression)}  # fmt: skip
        if original_run is not None:
            config["original_run"] = original_run
        return config

    def measurement_config(self, attack: str, count: int) -> dict[str, Any]:
        """The stored measurement's config (add_measurement adds the attack's settings, norm, eps_max, resolution, tol)."""
        config = {**self.context, "n": count, "attack": attack, "bounds": self.group["bounds"], "inputs_sha256": self.group["inputs_sha256"],
                  "batch_size": self.batch_size}  # fmt: skip
        if count < len(self.indices):
            config["first_of"] = len(self.indices)  # the first `count` of the audit inputs
        return config


def _read_back(store: Store, m: MeasurementRecord) -> RobustnessResult:
    """A stored measurement as the :class:`RobustnessResult` it was (no directions), as :func:`sparank.run.stored_results` reads it."""
    table = store.brackets(m.id)
    c = m.config
    return RobustnessResult(
        eps_lo=table.eps_lo, eps_hi=table.eps_hi, status=table.status, labels=table.label, directions=None, norm=c["norm"],
        eps_max=float(c["eps_max"]), resolution=float(c.get("resolution", 0.0)), tol=float(c.get("tol", 0.0)),
        attack=c.get("attack", "fgsm"), settings=c.get("attack_settings") or {"attack": c.get("attack", "fgsm")},
        distance=torch.where(table.distance.isnan(), table.eps_hi, table.distance), certified=table.certified,
    )  # fmt: skip


def _from_json(cls: type[Any], stored: Mapping[str, Any]) -> Any:
    """A flat dataclass of numbers and tuples from its ``to_dict()`` as stored (non-finite floats come back as strings)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint, value = hints[f.name], stored[f.name]
        if hint is float:
            values[f.name] = float(value)
        elif hint is int:
            values[f.name] = int(value)
        elif typing.get_origin(hint) is tuple:
            kind = typing.get_args(hint)[0]
            values[f.name] = tuple(kind(v) for v in value)
        else:
            values[f.name] = value
    return cls(**values)


def structure_from_dict(stored: Mapping[str, Any]) -> ModelStructure:
    """The :class:`~sparank.structure.ModelStructure` a store holds as ``to_dict()`` (a run's ``structure``)."""
    layers = {name: _from_json(LayerStructure, layer) for name, layer in stored["layers"].items()}
    return _from_json(ModelStructure, {**stored, "layers": layers})


def _recorded_audit(
    rec: _Recorder, compression: Compression | None, build: Callable[[], nn.Module], reference: nn.Module, x: Tensor, y: Tensor, *,
    original_run: str | None, k: int, attacks: Sequence[MinimalAttack], bounds: tuple[float, float], norm: str, eps_max: float,
    resolution: float, tol: float, certify: bool, batch_size: int, start: float,
) -> tuple[ModelAudit, str, list[int]]:  # fmt: skip
    """One model of an audit through the store: what is stored is read back, what is missing is measured and stored at once.

    The run (weights, structure, clean accuracy) is stored as soon as its FGSM measurement is
    done, then each measurement as it finishes, then best ε* with the masking flags. The model
    is built (``build``: compressed, and fine-tuned) only if its run is not stored; a stored run
    with a measurement missing is measured on its stored weights. The :class:`ModelAudit` is
    read back from the store, so it is the same whether it was measured now or before.

    Returns:
        (the model's audit, its run id, the ids of the measurements stored by this call).
    """
    from sparank.run import MeasuredAttack, record_measurements
    from sparank.store import DuplicateKeyError, measurement_key

    store = rec.store
    model: nn.Module | None = None
    fresh: dict[str, RobustnessResult] = {}
    fgsm_attack = FGSM(resolution=resolution, tol=tol, certify=certify)

    def measure_on(attack: MinimalAttack, count: int) -> RobustnessResult:
        return measure(attack, model, x[:count], y[:count], bounds=bounds, norm=norm, eps_max=eps_max, batch_size=batch_size).lean()  # type: ignore[arg-type]

    found = store.find_run(rec.run_key(compression))
    if found is None:
        model = build()
        fresh["fgsm"] = measure_on(fgsm_attack, len(x))  # type: ignore[arg-type]
        metrics = {"clean_accuracy": float((fresh["fgsm"].status != int(CLEAN_WRONG)).double().mean()), "n": len(x),
                   "seconds": time.perf_counter() - start}  # fmt: skip
        try:
            run_id = store.add_run(kind=AUDIT_KIND, config=rec.run_config(compression, original_run), metrics=metrics,
                                   structure=model_structure(model).to_dict(), state_dict=model.state_dict(), key=rec.run_key(compression))  # fmt: skip
        except DuplicateKeyError as race:  # stored meanwhile by another process
            run_id = str(race.existing)
    else:
        run_id = found.id

    def model_now() -> nn.Module:
        nonlocal model
        if model is None:  # a stored run with a measurement missing: its stored weights, in the original's module
            model = copy.deepcopy(reference)
            model.load_state_dict(store.load_weights(run_id))
            model.eval()
        return model

    recorded: list[int] = []
    members: list[MeasuredAttack] = []
    member_ids: list[int] = []
    for attack, count in [(fgsm_attack, len(x)), *((a, k) for a in attacks)]:
        settings = {**attack.settings(), **rec.group}
        indices = rec.indices[:count].clone()
        key = measurement_key(run_id, settings, indices)
        stored = store.find_measurement(key)
        if stored is None:
            result = fresh.pop(attack.name, None)
            if result is None:
                model_now()
                result = measure_on(attack, count)
            todo = MeasuredAttack(attack.name, settings, indices, result, rec.measurement_config(attack.name, count))
            recorded += record_measurements(store, run_id, [todo], None)
            stored = store.find_measurement(key)
            assert stored is not None
        members.append(MeasuredAttack(attack.name, settings, indices, _read_back(store, stored), stored.config))
        member_ids.append(stored.id)
    results = [m.result for m in members]
    heads = [results[0].first(k), *results[1:]]

    best_settings = {"attack": "best", **rec.group}
    best_key = measurement_key(run_id, best_settings, rec.indices[:k])
    best_record = store.find_measurement(best_key)
    if best_record is None or best_record.config.get("of") != sorted(member_ids):  # missing, or the best of other measurements
        flags = masking_flags(model_now(), x[:k], y[:k], heads, bounds=bounds, norm=norm, batch_size=batch_size).to_dict()  # type: ignore[arg-type]
        best = MeasuredAttack("best", best_settings, rec.indices[:k].clone(), best_of(heads), rec.measurement_config("best", k))
        recorded.append(record_measurements(store, run_id, [*members, best], flags)[-1])
        best_record = store.find_measurement(best_key)
        assert best_record is not None
    run = store.get_run(run_id)
    assert run.structure is not None
    audited = ModelAudit(
        compression, results[0], tuple(results[1:]), _read_back(store, best_record) if attacks else None,
        best_record.summary.get("masking"), structure_from_dict(run.structure), time.perf_counter() - start,
    )  # fmt: skip
    return audited, run_id, recorded


def audit(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    bounds: tuple[float, float],
    train_data: tuple[Tensor, Tensor] | None = None,
    families: Sequence[str] = FAMILIES,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    rank_fractions: Sequence[float] = DEFAULT_RANK_FRACTIONS,
    extra: Sequence[Compression] = (),
    fine_tune_epochs: int = 0,
    fine_tune_lr: float = 1e-3,
    fine_tune_batch_size: int = 64,
    norm: str = "linf",
    eps_max: float = 0.5,
    resolution: float = 1e-2,
    tol: float = 1e-6,
    certify: bool = False,
    attacks: Sequence[str] = (),
    attack_n: int | None = 100,
    steps: int | None = None,
    restarts: int = 0,
    accuracy_tolerance: float = 0.01,
    reference_eps: Sequence[float] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[str, int, int], None] | None = None,
    store: Store | None = None,
    model_name: str | None = None,
    input_indices: Tensor | None = None,
    context: Mapping[str, Any] | None = None,
) -> AuditResult:
    """Compress copies of ``model`` and measure what each compression does to robustness and accuracy.

    Args:
        model: any ``nn.Module`` mapping ``(N, *shape)`` to logits ``(N, K)``, with Linear or Conv
            layers; never modified (every measurement and compression uses a deep copy).
        inputs: ``(N, *shape)`` audit inputs inside ``bounds`` (e.g. a test split); never modified.
        labels: ``(N,)`` their true labels.
        bounds: the input box ``(lo, hi)`` (pixels: ``(0, 1)``).
        train_data: ``(inputs, labels)`` to fine-tune each copy on (needed for ``fine_tune_epochs > 0``).
        families: which compression families to run (:data:`sparank.compress.FAMILIES`).
        sparsities: levels of the pruning families, fractions of weights set to 0 in [0, 1).
        rank_fractions: levels of ``svd``, in (0, 1].
        extra: more compressions to audit besides the families' levels.
        fine_tune_epochs, fine_tune_lr, fine_tune_batch_size: fine-tuning of each copy with the
            mask or rank held fixed (0 epochs: none).
        norm, eps_max, resolution, tol: the FGSM measure (PROTOCOL §2).
        certify: FGSM ε* certified (``FGSM(certify=True)``: every ε below it proved classified correctly
            by bounds over the ray, :mod:`sparank.certify`) instead of scanned at ``resolution``; an input
            or a model the bounds cannot prove keeps the scan's result, marked not certified.
        attacks: cross-checks among ``pgd``, ``fmn``, ``deepfool`` (PROTOCOL §3), on the first
            ``attack_n`` inputs (None: all), with ``steps`` and ``restarts`` as ``sparank measure``.
            The gradient-masking flags are computed on those inputs whether or not cross-checks run.
        accuracy_tolerance: the largest clean-accuracy loss (a fraction: 0.01 = one point) that
            an acceptable compression may cost.
        reference_eps: ε of the robust-accuracy differences (default: 5, 10, 20 % of ``eps_max``).
        n_boot: bootstrap replicates (raised if the number of comparisons needs more for Holm).
        seed: the bootstrap's draws and the fine-tuning's data order.
        batch_size: rows per forward pass.
        progress: called as ``progress(label, done, total)`` before each model is measured.
        store: a writable :class:`~sparank.store.Store` to record the original and every copy in
            (runs of kind ``"audit"`` and their measurements, each as soon as it is done) and to
            resume from: what is stored under the same content key is read back, not measured
            again (module docstring). None: nothing is stored.
        model_name: what the model is, in the store's keys and configs (the CLI: ``--model``);
            default: the import path of its class.
        input_indices: ``(N,)`` integers, where each input comes from (the CLI: its index in the
            test split), stored with its brackets; default ``0..N-1``.
        context: more to record in each stored run's config (the CLI: the weights file and its
            sha256, the dataset); part of no key.

    Returns:
        :class:`AuditResult`; with a store, its ``run_ids`` and the ``recorded`` measurements.

    Raises:
        ValueError: bad settings (naming the parameter), inputs outside ``bounds`` or not a batch,
            a model without Linear or Conv layers or whose output is not ``(N, K)`` logits,
            fine-tuning without ``train_data``, ``input_indices`` that do not fit the inputs.
        StoreError: the store is read-only or damaged.
    """
    start_all = time.perf_counter()
    check_measure_args(norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")  # noqa: TRY004  ValueError: the one-line user-error path
    if not weight_layers(model):
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv layer to compress")
    x = as_tensor(inputs, "inputs").detach().clone()
    y = as_tensor(labels, "labels").detach().clone()
    box = check_inputs(x, y, bounds)
    bounds = (box.lo, box.hi)
    check_tol(tol, x.dtype, bounds, eps_max)
    for name in attacks:
        if name not in CROSS_CHECKS:
            raise ValueError(f"attacks must be among {', '.join(CROSS_CHECKS)}, got {name!r}")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks names an attack twice ({', '.join(attacks)}); give each once")
    if not isinstance(certify, bool):
        raise ValueError(f"certify must be True or False, got {certify!r}")  # noqa: TRY004  ValueError: the one-line user-error path
    if attack_n is not None and (isinstance(attack_n, bool) or not isinstance(attack_n, int) or attack_n < 1):
        raise ValueError(f"attack_n must be an integer >= 1 or None for all inputs, got {attack_n!r}")
    if not (isinstance(accuracy_tolerance, (int, float)) and math.isfinite(accuracy_tolerance) and 0 <= accuracy_tolerance < 1):
        raise ValueError(f"accuracy_tolerance must be a fraction in [0, 1) (0.01 = one point), got {accuracy_tolerance!r}")
    fine = FineTune(epochs=fine_tune_epochs, lr=fine_tune_lr, batch_size=fine_tune_batch_size, seed=seed)
    train = None
    if fine.epochs > 0:
        if train_data is None:
            raise ValueError("fine_tune_epochs > 0 needs train_data=(inputs, labels); pass it or set fine_tune_epochs=0")
        tx, ty = (as_tensor(t, name).detach() for t, name in zip(train_data, ("train inputs", "train labels")))
        check_inputs(tx, ty, bounds)
        train = (tx, ty)
    planned = [*compressions(families, sparsities=sparsities, rank_fractions=rank_fractions), *extra]
    if not planned:
        raise ValueError("nothing to audit: give at least one family with levels, or extra compressions")
    refs = tuple(f * eps_max for f in REFERENCE_FRACTIONS) if reference_eps is None else tuple(float(e) for e in reference_eps)
    cross = cross_check_attacks(attacks, resolution=resolution, tol=tol, steps=steps, restarts=restarts)
    k = len(x) if attack_n is None else min(attack_n, len(x))
    kwargs: dict[str, Any] = {"k": k, "attacks": cross, "bounds": bounds, "norm": norm, "eps_max": eps_max, "resolution": resolution, "tol": tol,
                                  "certify": certify, "batch_size": batch_size}  # fmt: skip

    reference = copy.deepcopy(model).eval()  # the user's object keeps its mode, parameters and gradients
    rec = None
    if store is not None:
        rec = _recorder(store, reference, x, y, bounds=bounds, norm=norm, eps_max=eps_max, train=train, fine=fine, batch_size=batch_size,
                        model_name=model_name, input_indices=input_indices, context=context)  # fmt: skip
    total = 1 + len(planned)
    run_ids: list[str] = []
    recorded: list[int] = []

    def one(c: Compression | None, build: Callable[[], nn.Module]) -> ModelAudit:
        start = time.perf_counter()
        if rec is None:
            return _measure_one(build(), c, x, y, start=start, **kwargs)
        audited, run_id, stored = _recorded_audit(rec, c, build, reference, x, y, original_run=run_ids[0] if run_ids else None,
                                                  start=start, **kwargs)  # fmt: skip
        run_ids.append(run_id)
        recorded.extend(stored)
        return audited

    if progress is not None:
        progress("original", 0, total)
    original = one(None, lambda: reference)
    measured: list[ModelAudit] = []
    for i, c in enumerate(planned, start=1):
        if progress is not None:
            progress(c.label, i, total)
        measured.append(one(c, functools.partial(compress, reference, c, train_data=train, fine_tune=fine)))
    if progress is not None:
        progress("comparisons", total, total)

    # Holm across the audit's comparisons needs p-values down to alpha/m: enough replicates for that
    n_boot = max(n_boot, math.ceil(2 * len(planned) / ALPHA))
    fgsm_cmp = [_compare(m.fgsm, original.fgsm, eps_max=eps_max, reference_eps=refs, n_boot=n_boot, seed=seed) for m in measured]
    fgsm_verdicts = verdicts(fgsm_cmp, alpha=ALPHA)
    best_cmp: list[PairedComparison | None] = [None] * len(measured)
    best_verdicts: list[Verdict | None] = [None] * len(measured)
    if cross:
        done = [
            _compare(m.best, original.best, eps_max=eps_max, reference_eps=refs, n_boot=n_boot, seed=seed)  # type: ignore[arg-type]
            for m in measured
        ]
        best_cmp, best_verdicts = list(done), list(verdicts(done, alpha=ALPHA))
    rows = []
    for m, fc, fv, bc, bv in zip(measured, fgsm_cmp, fgsm_verdicts, best_cmp, best_verdicts):
        change = m.clean_accuracy - original.clean_accuracy
        ok = fv != LESS_ROBUST and bv != LESS_ROBUST and change >= -accuracy_tolerance - 1e-12
        rows.append(CompressionComparison(m.compression, fc, fv, bc, bv, change, ok))  # type: ignore[arg-type]
    settings = {
        "bounds": list(bounds), "n": len(x), "norm": norm, "eps_max": eps_max, "resolution": resolution, "tol": tol,
        "certify": certify, "attacks": list(attacks), "attack_n": k, "steps": steps, "restarts": restarts,
        "fine_tune_epochs": fine.epochs, "fine_tune_lr": fine.lr, "fine_tune_batch_size": fine.batch_size,
        "accuracy_tolerance": accuracy_tolerance, "reference_eps": list(refs), "n_boot": n_boot, "alpha": ALPHA, "seed": seed,
        "families": list(families), "sparsities": list(sparsities), "rank_fractions": list(rank_fractions),
        "extra": [c.label for c in extra],
    }  # fmt: skip
    result = AuditResult(original, tuple(measured), tuple(rows), settings, time.perf_counter() - start_all, run_ids=tuple(run_ids),
                         recorded=tuple(recorded))  # fmt: skip
    return _with_answers(result)


def _recorder(
    store: Store, reference: nn.Module, x: Tensor, y: Tensor, *, bounds: tuple[float, float], norm: str, eps_max: float,
    train: tuple[Tensor, Tensor] | None, fine: FineTune, batch_size: int, model_name: str | None, input_indices: Tensor | None,
    context: Mapping[str, Any] | None,
) -> _Recorder:  # fmt: skip
    """The keys' ingredients of an audit (hashes of the model, the inputs and the training data), its arguments checked."""
    import sparank
    from sparank.store import Store

    if not isinstance(store, Store):
        raise ValueError(f"store must be a sparank.store.Store (open one with Store(path)), got {type(store).__name__}")  # noqa: TRY004  ValueError: the one-line user-error path
    if input_indices is None:
        indices = torch.arange(len(x))
    else:
        indices = torch.as_tensor(input_indices).detach().to("cpu")
        if indices.shape != (len(x),) or indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"input_indices must be {len(x)} integers, one per input, got shape {tuple(indices.shape)} {indices.dtype}")
        indices = indices.to(torch.int64)
    cls = f"{type(reference).__module__}:{type(reference).__qualname__}"
    identity = {
        "sparank": sparank.__version__, "name": model_name or cls, "class": cls, "source_sha256": _source_sha256(reference),
        "state_sha256": tensors_sha256(reference.state_dict()),
    }  # fmt: skip
    group = {"norm": norm, "eps_max": eps_max, "bounds": list(bounds), "inputs_sha256": tensors_sha256({"inputs": x, "labels": y})}
    tuning = None
    if fine.epochs > 0:
        assert train is not None
        tuning = {**dataclasses.asdict(fine), "train_sha256": tensors_sha256({"inputs": train[0], "labels": train[1]})}
    return _Recorder(store, identity, group, indices, tuning, dict(context or {}), batch_size)


def _with_answers(result: AuditResult) -> AuditResult:
    """Per family (and per set of named layers, for compressions that name theirs), the strongest acceptable setting."""
    answers = []
    for family, layers in dict.fromkeys((c.compression.family, c.compression.layers) for c in result.comparisons):
        group = [c for c in result.comparisons if (c.compression.family, c.compression.layers) == (family, layers)]
        ordered = sorted(group, key=lambda c: c.compression.strength)
        ok = [i for i, c in enumerate(ordered) if c.acceptable]
        if not ok:
            answers.append(FamilyAnswer(family, None, ordered[0], layers))
            continue
        i = ok[-1]
        answers.append(FamilyAnswer(family, ordered[i], ordered[i + 1] if i + 1 < len(ordered) else None, layers))
    return dataclasses.replace(result, per_family=tuple(answers))


# --------------------------------------------------------------------------- the answer, in words


def _pct_points(change: float) -> str:
    return f"{100 * change:+.1f} points"


def _cost(c: CompressionComparison) -> str:
    """What a setting costs: median ε* ratio with its interval, AUC change, accuracy change, verdict."""
    ratio = c.fgsm.ratio
    auc = c.fgsm.auc_difference
    text = (
        f"median ε* × {ratio.estimate:.3g} [{ratio.low:.3g}, {ratio.high:.3g}], AUC {auc.estimate:+.3g} "
        f"[{auc.low:+.3g}, {auc.high:+.3g}], clean accuracy {_pct_points(c.accuracy_change)}: {c.fgsm_verdict}"
    )
    if c.best_verdict is not None and c.best is not None:
        text += f" (best ε*: × {c.best.ratio.estimate:.3g}, {c.best_verdict})"
    return text


def _why_not(c: CompressionComparison, tolerance: float) -> str:
    """What keeps ``c`` from being acceptable, as a predicate: ``is less robust and costs 3.1 points of clean accuracy``."""
    reasons = []
    if c.fgsm_verdict == LESS_ROBUST or c.best_verdict == LESS_ROBUST:
        reasons.append("is less robust")
    if c.accuracy_change < -tolerance - 1e-12:
        reasons.append(f"costs {-100 * c.accuracy_change:.1f} points of clean accuracy")
    return " and ".join(reasons) or "is acceptable too"


def answer_paragraph(result: AuditResult) -> str:
    """The report's opening paragraph (see :meth:`AuditResult.answer`)."""
    from sparank.compress import FAMILY_TITLES, LEVEL_NAMES

    s = result.settings
    tol = float(s["accuracy_tolerance"])
    o = result.original
    parts = [
        (
            f"On {s['n']} inputs the original classifies {100 * o.clean_accuracy:.1f} % correctly with FGSM ε* AUC "
            f"{o.fgsm.summary().auc:.4g} ({s['norm']}, ε_max {s['eps_max']:g}). Per family, the strongest setting that is "
            f"not significantly less robust (median paired ε* ratio, 95 % bootstrap over inputs, Holm across the "
            f"{len(result.comparisons)} compressions) and loses at most {100 * tol:g} point{'s' if tol != 0.01 else ''} "
            f"of clean accuracy:"
        )
    ]
    for fa in result.per_family:
        title = FAMILY_TITLES.get(fa.family, fa.family) + ("" if fa.layers is None else f" of {', '.join(fa.layers)}")
        if fa.chosen is None:
            c = fa.next_stronger
            assert c is not None
            parts.append(
                f"{title}: no setting qualifies; the weakest audited, {LEVEL_NAMES[fa.family]} {c.compression.level:g}, "
                f"{_why_not(c, tol)} ({_cost(c)})."
            )
            continue
        c = fa.chosen
        text = f"{title}: {LEVEL_NAMES[fa.family]} {c.compression.level:g} ({_cost(c)})"
        masked = _masked(result, c.compression)
        if masked:
            text += " — gradient-masking flags raised on it, so its ε* may overstate its robustness"
        if fa.next_stronger is None:
            text += "; it is the strongest setting audited."
        else:
            n = fa.next_stronger
            text += f"; the next stronger, {n.compression.level:g}, {_why_not(n, tol)} ({_cost(n)})."
        parts.append(text)
    if s.get("fine_tune_epochs"):
        parts.append(f"Each copy was fine-tuned {s['fine_tune_epochs']} epoch(s) with its mask or rank held fixed.")
    else:
        parts.append("No copy was fine-tuned (one-shot compression).")
    parts.append("The intervals cover the choice of inputs, not the randomness of training: there is one original model.")
    return " ".join(parts)


def _masked(result: AuditResult, compression: Compression) -> bool:
    for m in result.compressed:
        if m.compression == compression:
            return bool(m.masked)
    return False


# --------------------------------------------------------------------------- a model from the command line


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(spec: str) -> bool:
    """Whether ``spec`` is ``package.module:factory`` rather than one of the package's architecture specs."""
    return bool(_IMPORT_PATH.match(spec.strip())) and spec.split(":", 1)[0] not in ("linear", "mlp", "cnn")


def import_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``package.module:attribute`` (the current folder is searched first, as uvicorn does).

    Raises:
        ValueError: in one line: a malformed path, a module that cannot be imported (and why), a missing attribute.
    """
    if not _IMPORT_PATH.match(path.strip()):
        raise ValueError(f"--model {path!r} is neither an architecture spec (e.g. mlp:300,100) nor an import path package.module:factory")
    module_name, attribute = path.strip().split(":", 1)
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ValueError(
                f"--model {path}: no module named {module_name!r} (looked in {here} and sys.path); run from the folder that holds "
                f"{module_name.split('.')[0]}/ or add it to PYTHONPATH"
            ) from None
        raise ValueError(f"--model {path}: importing {module_name!r} failed: it needs {exc.name!r}, which is not installed") from None
    except Exception as exc:  # noqa: BLE001  the module raised while importing: named in one line
        raise ValueError(f"--model {path}: importing {module_name!r} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", "") == module_name
            ]
            hint = f"; callables defined there: {', '.join(sorted(names)[:8])}" if names else ""
            raise ValueError(f"--model {path}: module {module_name!r} has no attribute {attribute!r}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"--model {path}: {attribute!r} is a {type(target).__name__}, not a callable that returns the model")  # noqa: TRY004  ValueError: the one-line user-error path
    return target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(
    spec: str, input_shape: tuple[int, ...], num_classes: int, *, weights: dict[str, Tensor] | None = None, source: str = "the weights"
) -> nn.Module:
    """The model of ``--model SPEC`` for inputs ``input_shape`` and ``num_classes`` classes, with ``weights`` loaded, in eval mode.

    ``spec`` is an architecture spec of :func:`sparank.models.build_model` or an import path
    ``package.module:factory``. The factory is called with ``input_shape`` and/or ``num_classes``
    as keywords if its signature names them, else with no arguments, and must return an
    ``nn.Module``. The model's logits on two inputs must be shaped ``(2, num_classes)``.

    Raises:
        ValueError: in one line: a bad spec or import path, a factory that fails or returns something
            else than a module, logits of the wrong shape, weights that do not fit (the keys and shapes named).
    """
    from sparank.models import build_model, load_state

    if is_import_path(spec):
        factory = import_factory(spec)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        given = {k: v for k, v in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)) if k in params}
        try:
            model = factory(**given)
        except Exception as exc:  # noqa: BLE001  the user's code may raise anything: named in one line
            shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
            raise ValueError(f"--model {spec}: calling the factory({shown}) failed: {type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        model = build_model(spec, input_shape, num_classes)
    if weights is not None:
        try:
            load_state(model, weights, source=source)
        except ValueError as exc:
            raise ValueError(_first_line(exc).replace("check --arch and --dataset", "check --model and --dataset")) from None
    model.eval()
    check_logits(model, input_shape, num_classes, name=f"--model {spec}")
    return model


@torch.no_grad()
def check_logits(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, *, name: str = "the model") -> None:
    """ValueError in one line unless ``model`` maps two inputs of ``input_shape`` to float logits ``(2, num_classes)``."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.full((2, *input_shape), 0.5, dtype=dtype, device=device)
    try:
        out = model(probe)
    except Exception as exc:  # noqa: BLE001  the user's code may raise anything: named in one line
        raise ValueError(
            f"{name} fails on inputs shaped (N, {', '.join(str(d) for d in input_shape)}): {type(exc).__name__}: {_first_line(exc)}; "
            "it must take the dataset's images"
        ) from None
    if not isinstance(out, Tensor):
        raise ValueError(f"{name} returned a {type(out).__name__}; it must return a logits tensor (N, {num_classes})")  # noqa: TRY004  ValueError: the one-line user-error path
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(
            f"{name} returned logits shaped {tuple(out.shape)} for 2 inputs; they must be (N, {num_classes}), one per class of the dataset"
        )


__all__ = [
    "AUDIT_KIND",
    "AuditResult",
    "CompressionComparison",
    "FamilyAnswer",
    "ModelAudit",
    "answer_paragraph",
    "audit",
    "check_logits",
    "import_factory",
    "is_import_path",
    "load_model",
    "structure_from_dict",
    "tensors_sha256",
]
