"""The ``sparank`` command: thin wrappers that parse options and call the modules.

Every user or environment fault (unknown dataset, bad spec, a bad option
value, missing or unreadable file, weights that do not fit, a read-only or
damaged store, out of memory) is one line on stderr and exit status 2, and
every option is checked before any work starts; set SPARANK_DEBUG=1 for the
traceback. Output for people is plain text that fits the terminal (80
columns when piped with COLUMNS set; nothing is cut, less important columns
are dropped); ``--json`` is for programs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import sqlite3
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from sparank.data import Dataset
    from sparank.store import Store

app = typer.Typer(
    name="sparank",
    help="Does sparse or low-rank regularisation make a classifier easier to fool? Train, measure ε* along the FGSM ray, compare.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)  # never hard-wrap a line: a terminal wraps, a pipe keeps it whole
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_STORE = Path("sparank-results")

StoreOpt = Annotated[Path, typer.Option("--store", help="results store directory (SQLite + safetensors weights)")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="CPU threads torch uses (default: every core this process may use)", show_default=False)
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="directory holding the IDX files; the only place looked when given (else $SPARANK_DATA, else /usr/share/datasets/<name>)",
    ),
]


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- one-line errors


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _os_message(exc: OSError) -> str:
    """``[Errno 13] Permission denied: 'x'`` as ``permission denied: x (...)``."""
    what = (exc.strerror or type(exc).__name__).lower()
    where = f": {exc.filename}" if exc.filename else ""
    also = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{what}{where}{also}; check the path and its permissions"


_OOM = re.compile(r"can't allocate memory|out of memory|not enough memory", re.IGNORECASE)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the faults a user or the environment can cause into one line and exit status 2.

    Caught: ValueError (bad values; StoreError and DatasetError are ValueErrors),
    OSError (missing, unreadable, read-only or full: files, folders, disks),
    SQLite errors of the file (damaged, locked, read-only; not sparank's own SQL
    mistakes), MemoryError and torch's out-of-memory RuntimeError. Anything
    else is a bug and keeps its traceback.
    """
    debug = bool(os.environ.get("SPARANK_DEBUG"))
    try:
        with warnings.catch_warnings():
            if not debug:  # a warning is one line too: "warning: ...", without the source line Python prints
                warnings.showwarning = _warning_line
            yield
    except KeyboardInterrupt:
        err.print("interrupted: everything already written to the store is kept")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except ValueError as exc:
        if debug:
            raise
        _fail(_first_line(exc))
    except OSError as exc:
        if debug:
            raise
        _fail(_os_message(exc))
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise  # sparank's own mistake: keep the traceback
    except sqlite3.DatabaseError as exc:
        if debug:
            raise
        _fail(f"the results store's database cannot be used ({_first_line(exc)}); is it damaged? restore it or use another --store")
    except MemoryError:
        if debug:
            raise
        _fail("out of memory; use a smaller model, --batch-size or --n")
    except RuntimeError as exc:
        if debug or not _OOM.search(str(exc)):
            raise
        _fail(f"out of memory ({_first_line(exc)[:120]}); use a smaller model, --batch-size or --n")


def _warning_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None
) -> None:
    text = str(message).strip()
    err.print(f"warning: {text.splitlines()[0] if text else category.__name__}", markup=False)


@contextlib.contextmanager
def _as_options(names: dict[str, str]) -> Iterator[None]:
    """Re-word a library ValueError that starts with a parameter name (``eps_max must ...``) with its option (``--eps-max``)."""
    try:
        yield
    except ValueError as exc:
        text = _first_line(exc)
        for name, option in names.items():
            if re.match(rf"{re.escape(name)}\b", text):
                raise ValueError(option + text[len(name) :]) from exc
        raise


def _check_int(option: str, value: int | None, *, low: int, fix: str = "") -> None:
    if value is not None and value < low:
        raise ValueError(f"{option} must be an integer >= {low}, got {value}{f'; {fix}' if fix else ''}")


def _check_positive(option: str, value: float | None, *, fix: str = "") -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a finite number > 0, got {value}{f'; {fix}' if fix else ''}")


def _set_threads(threads: int | None) -> None:
    import torch

    from sparank.runtime import keep_freed_memory

    _check_int("--threads", threads, low=1, fix="leave it out to use every core")
    torch.set_num_threads(threads if threads is not None else _default_threads())
    keep_freed_memory()  # steady timings: freed tensors' memory is reused, not faulted in again


# --------------------------------------------------------------------------- plain tables


def _screen_width() -> int | None:
    """The width output must fit: the terminal's, or $COLUMNS when piped; None (no limit) when piped without it."""
    if out.is_terminal:
        return out.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def _table_lines(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, keep: Sequence[int], right: Sequence[int] = (), width: int | None = None
) -> list[str]:
    """A plain-text table, never cutting a cell: columns are dropped, least important first, until it fits ``width``.

    Args:
        headers: one per column.
        rows: cells, already formatted (no spaces inside a cell keep the output easy for awk).
        keep: every column index, most important first; the first is never dropped.
        right: indices of right-aligned (numeric) columns.
        width: the width to fit, or None for every column.
    """
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    shown = sorted(keep)
    order = list(keep)
    while width is not None and len(order) > 1 and sum(widths[i] for i in shown) + 2 * (len(shown) - 1) > width:
        dropped = order.pop()
        shown.remove(dropped)

    def line(cells: Sequence[str]) -> str:
        parts = [cells[i].rjust(widths[i]) if i in right else cells[i].ljust(widths[i]) for i in shown]
        return "  ".join(parts).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines += [line(r) for r in rows]
    return lines


def _print_lines(lines: Sequence[str]) -> None:
    for text in lines:
        out.print(text, markup=False, soft_wrap=True)


def _epoch_progress(total: int, label: str) -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  test acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task(escape(label), total=total, loss="-", acc="-")
    return progress, task


def _data_record(data: Dataset) -> dict[str, Any]:
    """Where a dataset was read from, stored with every run and measurement."""
    return {"data_source": data.source, "data_files": list(data.files)}


def _check_train_options(*, epochs: int, lr: float, batch_size: int, optimizer: str, seed: int) -> None:
    _check_int("--epochs", epochs, low=1, fix="0 would store an untrained model")
    _check_positive("--lr", lr, fix="e.g. 1e-3 for adam, 0.05 for sgd")
    _check_int("--batch-size", batch_size, low=1)
    _check_int("--seed", seed, low=0)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"--optimizer must be adam or sgd, got {optimizer!r}")


def _check_dataset_name(name: str) -> None:
    from sparank.data import DATASETS

    if name.strip().lower().replace("_", "-") not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (--dataset): choose one of {', '.join(DATASETS)}")


def _regulariser(name: str, strength: float | None, fine_tune_epochs: int | None) -> Any:
    """The regulariser of ``--regulariser``/``--strength``/``--fine-tune-epochs``; ValueError names the option.

    The methods check their own values (run it inside :func:`_as_options`); this adds only which
    methods take ``--fine-tune-epochs`` at all.
    """
    from sparank.regularisers import REGISTRY
    from sparank.regularisers import get as get_regulariser

    if fine_tune_epochs is None:
        return get_regulariser(name, strength)
    cls = REGISTRY.get(name)
    if cls is not None and "fine_tune_epochs" not in inspect.signature(cls).parameters:
        takes = ", ".join(n for n, c in REGISTRY.items() if "fine_tune_epochs" in inspect.signature(c).parameters)
        raise ValueError(f"--fine-tune-epochs: regulariser {name!r} does not fine-tune; the ones that do: {takes}")
    return get_regulariser(name, strength, fine_tune_epochs=fine_tune_epochs)


def _train_run(
    *,
    dataset: str,
    arch: str,
    epochs: int,
    seed: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    regulariser: str,
    strength: float | None,
    data_dir: Path | None,
    store: Store,
    fine_tune_epochs: int | None = None,
) -> str:
    """Train one model through :func:`sparank.run.run` and store it with :func:`sparank.run.record`; return the run id.

    Every option is checked, and the store opened for writing, before the data
    are read or anything trains. A run with the same content key (the spec's
    ``train_key``: a seed gives the same weights) is reused, also when another
    process stored it while this one trained.
    """
    from sparank.data import load_dataset
    from sparank.models import MAX_PARAMETERS, count_parameters
    from sparank.run import RunSpec, TrainSpec, record, run, stored_state

    _check_train_options(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, seed=seed)
    with _as_options({"strength": "--strength", "fine_tune_epochs": "--fine-tune-epochs"}):
        _regulariser(regulariser, strength, fine_tune_epochs)  # the options' own wording first
        spec = RunSpec(
            dataset=dataset, arch=arch, regulariser=regulariser, strength=strength, fine_tune_epochs=fine_tune_epochs, seed=seed,
            train=TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer), measure=None,  # type: ignore[arg-type]
        )  # fmt: skip
    data = load_dataset(dataset, data_dir=data_dir)
    count = count_parameters(spec.arch, data.input_shape, data.num_classes)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"--arch {spec.arch} on {data.name} would have {count:,} parameters, over the limit of {MAX_PARAMETERS:,}; use smaller widths"
        )
    done = stored_state(store, spec)
    if done is not None:
        out.print(f"run [bold]{done[0]}[/] already has this config (a seed gives the same weights): reusing it")
        return done[0]
    progress, task = _epoch_progress(epochs, f"train {spec.arch} on {data.name} [{spec.regulariser}]")

    def on_epoch(record: Any) -> None:
        acc = f"{record.test_accuracy:.3f}" if record.test_accuracy is not None else "-"
        progress.update(task, advance=1 if record.phase == "train" else 0, loss=f"{record.loss:.4f}", acc=acc)

    with progress:
        result = run(spec, data=data, on_epoch=on_epoch)
    meanwhile = stored_state(store, spec)
    run_id = record(store, result)
    if meanwhile is not None:  # another process stored the same run while this one trained
        out.print(f"run [bold]{run_id}[/] with this config was stored meanwhile by another process: reusing it")
        return run_id
    acc = result.metrics["test_accuracy"]
    shown = f"{acc:.4f}" if acc is not None else "n/a"
    out.print(
        f"run [bold]{run_id}[/]: {spec.arch} on {data.name}, {spec.regulariser}, test accuracy {shown}, "
        f"sparsity {result.structure['sparsity']:.3f}"
    )
    return run_id


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist")] = "digits",
    arch: Annotated[str, typer.Option(help="model spec: linear, mlp[:w1,w2,...], cnn[:c1,c2,hidden]")] = "mlp",
    epochs: Annotated[int, typer.Option(help="passes over the training set (at least 1)")] = 20,
    seed: Annotated[int, typer.Option(help="seeds initialisation and shuffling")] = 0,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="mini-batch size")] = 64,
    optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
    regulariser: Annotated[str, typer.Option(help="method name (see `sparank regularisers`)")] = "none",
    strength: Annotated[float | None, typer.Option(help="the method's strength (see `sparank regularisers`)")] = None,
    fine_tune_epochs: Annotated[
        int | None,
        typer.Option(
            help="epochs of fine-tuning after training, for the methods that fine-tune (none, magnitude, "
            "svd_truncate); `--regulariser none --fine-tune-epochs K` is the dense counterpart of a method fine-tuned K epochs"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    threads: ThreadsOpt = None,
) -> None:
    """Train a classifier and store it with its config, history, metrics, training budget and structure.

    Example: sparank train --dataset digits --arch mlp:300,100 --epochs 20 --seed 0
    """
    from sparank.models import parse_spec
    from sparank.store import Store

    with _user_errors():
        _set_threads(threads)
        _check_train_options(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, seed=seed)
        _check_dataset_name(dataset)
        with _as_options({"strength": "--strength", "fine_tune_epochs": "--fine-tune-epochs"}):
            parse_spec(arch)
            _regulariser(regulariser, strength, fine_tune_epochs)
        with Store(store) as opened:  # checks that it can write before anything trains
            _train_run(
                dataset=dataset, arch=arch, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, optimizer=optimizer,
                regulariser=regulariser, strength=strength, data_dir=data_dir, store=opened, fine_tune_epochs=fine_tune_epochs,
            )  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_MEASURE_OPTIONS = {"eps_max": "--eps-max", "resolution": "--resolution", "tol": "--tol", "batch_size": "--batch-size", "norm": "--norm"}


def _check_measure_options(
    *, n: int | None, eval_seed: int | None, norm: str, eps_max: float, resolution: float, tol: float, batch_size: int
) -> None:
    from sparank.robustness import check_measure_args

    _check_int("--n", n, low=1, fix="leave --n out to measure the whole test split")
    _check_int("--eval-seed", eval_seed, low=0, fix="leave it out to take the first --n inputs")
    with _as_options(_MEASURE_OPTIONS):
        check_measure_args(norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)


def _measure_progress(total: int, label: str) -> tuple[Progress, Callable[[int, int], None]]:
    """A bar of inputs resolved / total with an ETA, and the callback that advances it."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("inputs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,  # the summary follows; piped, nothing is drawn
    )
    task = progress.add_task(escape(label), total=total)

    def on_progress(resolved: int, of: int) -> None:
        progress.update(task, completed=resolved, total=of)

    return progress, on_progress


#: the attacks `sparank measure --attack` knows (PROTOCOL §2–3); the default is the headline FGSM ray
ATTACK_NAMES = ("fgsm", "pgd", "fmn", "deepfool", "transfer", "random")


def _check_attack_options(
    *, attacks: Sequence[str], source: str | None, via: str, steps: int | None, restarts: int, certify: bool = False, fast: bool = False
) -> None:
    for name in attacks:
        if name not in ATTACK_NAMES:
            raise ValueError(f"--attack must be one of {', '.join(ATTACK_NAMES)}, got {name!r}")
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"--attack names an attack twice ({', '.join(attacks)}); give each once")
    if ("transfer" in attacks) != (source is not None):
        raise ValueError(
            "--attack transfer needs --source RUN (the model the adversarial is computed on)"
            if source is None else "--source is only used with --attack transfer; add --attack transfer or leave --source out"
        )  # fmt: skip
    if via not in ("fgsm", "pgd"):
        raise ValueError(f"--via must be fgsm (the source's FGSM ray) or pgd (the source's PGD steps), got {via!r}")
    _check_int("--steps", steps, low=1, fix="leave it out for each attack's default")
    _check_int("--restarts", restarts, low=0, fix="0 runs PGD from the FGSM start only")
    for flag, on in (("--certify", certify), ("--fast", fast)):
        if on and "fgsm" not in attacks:
            raise ValueError(f"{flag} applies to the fgsm attack only; add --attack fgsm or leave {flag} out")


def _attack(
    name: str,
    *,
    resolution: float,
    tol: float,
    steps: int | None,
    restarts: int,
    source: Any = None,
    source_name: str = "",
    via: str = "fgsm",
    certify: bool = False,
    fast: bool = False,
) -> Any:
    """The attack object for a CLI name and options (each attack checks its own settings)."""
    from sparank.attacks import FGSM, RandomRay, Transfer

    with _as_options({"resolution": "--resolution", "tol": "--tol", "steps": "--steps", "restarts": "--restarts"}):
        if name == "fgsm":
            return FGSM(resolution=resolution, tol=tol, certify=certify, fast=fast)
        if name == "random":
            return RandomRay(resolution=resolution, tol=tol)
        if name == "transfer":
            extra = {} if steps is None else {"steps": steps}
            return Transfer(source=source, source_name=source_name, kind=via, resolution=resolution, tol=tol, **extra)
        from sparank.run import cross_check_attacks  # pgd, fmn, deepfool: as a run spec builds them

        return cross_check_attacks([name], resolution=resolution, tol=tol, steps=steps, restarts=restarts)[0]


def _stored_model(store: Store, run_id: str, data: Any) -> Any:
    from sparank.models import build_model, load_state

    run = store.get_run(run_id)
    model = build_model(run.config["arch"], data.input_shape, data.num_classes)
    load_state(model, store.load_weights(run_id), source=f"run {run_id}")
    return model


def _stored_result(m: Any, table: Any) -> Any:
    """A stored measurement and its brackets (``Store.brackets``) as a RobustnessResult (no directions, no adversarials)."""
    import torch

    from sparank.robustness import RobustnessResult

    distance = torch.where(table.distance.isnan(), table.eps_hi, table.distance)  # stored before distances: ε* bounds it
    c = m.config
    return RobustnessResult(
        eps_lo=table.eps_lo, eps_hi=table.eps_hi, status=table.status, labels=table.label, directions=None, norm=c["norm"],
        eps_max=float(c["eps_max"]), resolution=float(c.get("resolution", 0.0)), tol=float(c.get("tol", 0.0)),
        attack=c.get("attack", "fgsm"), settings=c.get("attack_settings") or {"attack": c.get("attack", "fgsm")}, distance=distance,
    )  # fmt: skip


def _measure_run(
    *,
    run_id: str,
    store: Store,
    data_dir: Path | None,
    n: int | None,
    eval_seed: int | None,
    norm: str,
    eps_max: float,
    resolution: float,
    tol: float,
    batch_size: int,
    force: bool = False,
    attacks: Sequence[str] = ("fgsm",),
    source: str | None = None,
    via: str = "fgsm",
    steps: int | None = None,
    restarts: int = 0,
    certify: bool = False,
    fast: bool = False,
) -> tuple[list[tuple[str, int, dict[str, Any], bool]], dict[str, Any] | None]:
    """Measure a stored run with each attack, store every measurement as it finishes, then its best ε* and masking flags.

    A measurement is keyed by (run, attack and its settings, data source,
    evaluation indices): the same measurement again is reused, not stored twice,
    unless ``force`` (then it replaces the old one). ``transfer`` measures both
    directions: this run with ``source``'s adversarials, and ``source`` with this run's.
    After the attacks, the best ε* over every attack stored for these inputs and
    settings, with the model's gradient-masking flags, is stored (replacing the previous one).
    With ``certify`` the FGSM measurement is the certified one (``FGSM(certify=True)``, its own key); with
    ``fast`` it scans the opt-in fast copy (``FGSM(fast=True)``, its own key too).

    Returns:
        ([(run, measurement id, summary, reused) per attack], the best record's summary or None).
    """
    from sparank.data import eval_subset, load_dataset

    _check_measure_options(n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
    _check_attack_options(attacks=attacks, source=source, via=via, steps=steps, restarts=restarts, certify=certify, fast=fast)
    if store.readonly:
        raise ValueError(f"store {store.path} is read-only; measuring writes to it")
    run = store.get_run(run_id)
    if source is not None:
        if source == run_id:
            raise ValueError(f"--source {source} is the run measured; give another run (e.g. its dense counterpart)")
        other = store.get_run(source)
        if other.config.get("dataset") != run.config.get("dataset"):
            raise ValueError(
                f"--source {source} was trained on {other.config.get('dataset')} but run {run_id} on {run.config.get('dataset')}: transfer needs one dataset"
            )
    data = load_dataset(run.config["dataset"], data_dir=data_dir)
    total = len(data.test_y)
    if n is not None and n > total:
        raise ValueError(f"--n must be at most {total} (the {data.name} test set size), got {n}; leave --n out to measure all {total}")
    indices, x, y = eval_subset(data, n, seed=eval_seed)
    models: dict[str, Any] = {}

    def model_of(rid: str) -> Any:
        if rid not in models:
            models[rid] = _stored_model(store, rid, data)
        return models[rid]

    # certified FGSM, or FGSM on the fast copy, is measured here (the run spec's FGSM is the plain scan; PGD starts from it)
    own_fgsm = certify or fast
    spec_attacks = [a for a in attacks if not (own_fgsm and a == "fgsm")]
    done_by_attack = _measure_spec_attacks(
        store, run_id, data, model_of, attacks=spec_attacks, n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max, resolution=resolution,
        tol=tol, batch_size=batch_size, steps=steps, restarts=restarts, force=force,
    )  # fmt: skip
    jobs: list[tuple[str, str, str | None]] = []  # (target run, attack, source run): the attacks run.py does not make
    for name in attacks:
        if name == "transfer":
            assert source is not None
            jobs += [(run_id, name, source), (source, name, run_id)]
        elif name == "random" or (own_fgsm and name == "fgsm"):
            jobs.append((run_id, name, None))
    done: list[tuple[str, int, dict[str, Any], bool]] = []
    for target, name, src in jobs:
        attack = _attack(name, resolution=resolution, tol=tol, steps=steps, restarts=restarts,
                         source=None if src is None else model_of(src), source_name=src or "", via=via, certify=certify,
                         fast=fast)  # fmt: skip
        done.append(_measure_one(store, target, attack, data, indices, x, y, eval_seed=eval_seed, norm=norm, eps_max=eps_max,
                                 batch_size=batch_size, force=force, model_of=model_of))  # fmt: skip
    by_attack = {(t, a): d for (t, a, _), d in zip(jobs, done, strict=True)}
    done = [done_by_attack[a] if a in done_by_attack else by_attack[(run_id, a)] for a in attacks if a != "transfer"] + [
        by_attack[(t, a)] for t, a, _ in jobs if a == "transfer"
    ]  # in the order asked: the run's own, then both transfer directions
    best = None
    for target in dict.fromkeys([run_id, *(t for t, _, _ in jobs)]):
        record = _store_best(store, target, data, indices, x, y, norm=norm, eps_max=eps_max, batch_size=batch_size, model_of=model_of)
        if target == run_id:
            best = record
    return done, best


#: the attacks `sparank measure` makes through sparank.run (the others, transfer and random, need no run spec)
_SPEC_ATTACKS = ("fgsm", "pgd", "fmn", "deepfool")


def _measure_spec_attacks(store: Store, run_id: str, data: Any, model_of: Callable[[str], Any], *, attacks: Sequence[str], n: int | None,
                          eval_seed: int | None, norm: str, eps_max: float, resolution: float, tol: float, batch_size: int,
                          steps: int | None, restarts: int, force: bool) -> dict[str, tuple[str, int, dict[str, Any], bool]]:  # fmt: skip
    """Measure the run with the asked attacks among fgsm/pgd/fmn/deepfool (FGSM always) through sparank.run; store them.

    What the store has (same key) is reused, not measured again, unless ``force``. Returns
    {attack: (run, measurement id, summary, reused)} for the asked ones.
    """
    from sparank.run import MeasureSpec, measure_model, measurement_keys, record_measurements, stored_results

    asked = [a for a in attacks if a in _SPEC_ATTACKS]
    if not asked:
        return {}
    with _as_options({**_MEASURE_OPTIONS, "steps": "--steps", "restarts": "--restarts"}):
        mspec = MeasureSpec(
            n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size,  # type: ignore[arg-type]
            attacks=tuple(a for a in asked if a != "fgsm"), attack_n=None, steps=steps, restarts=restarts,  # type: ignore[arg-type]
        )  # fmt: skip
    known = {} if force else stored_results(store, run_id, mspec, data)
    keys = measurement_keys(run_id, mspec, data)
    for name in known:
        found = store.find_measurement(keys[name])
        err.print(f"measurement [bold]{found.id if found else '?'}[/] ({name}) of run {run_id} has these settings and inputs: "
                  "reusing it (--force measures again)")  # fmt: skip
    bars: dict[str, tuple[Progress, Callable[[int, int], None]]] = {}

    def on_inputs(attack: str, resolved: int, total: int) -> None:
        if attack not in bars:
            for bar, _ in bars.values():
                bar.stop()
            bars[attack] = _measure_progress(total, f"{attack} ε* of {run_id}")
            bars[attack][0].start()
        bars[attack][1](resolved, total)

    try:
        measurements, masking = measure_model(model_of(run_id), data, mspec, known=known, on_inputs=on_inputs)
    finally:
        for bar, _ in bars.values():
            bar.stop()
    ids = record_measurements(store, run_id, measurements, masking, replace=force)
    stored = {m.id: m for m in store.measurements(run_id)}
    return {
        m.attack: (run_id, mid, stored[mid].summary, m.attack in known)
        for m, mid in zip(measurements, ids, strict=True) if m.attack in asked
    }  # fmt: skip


def _group_settings(data: Any, *, norm: str, eps_max: float) -> dict[str, Any]:
    return {"norm": norm, "eps_max": eps_max, "bounds": [0.0, 1.0], "split": "test", "data_source": data.source}


def _measure_one(store: Store, run_id: str, attack: Any, data: Any, indices: Any, x: Any, y: Any, *, eval_seed: int | None, norm: str,
                 eps_max: float, batch_size: int, force: bool, model_of: Callable[[str], Any]) -> tuple[str, int, dict[str, Any], bool]:  # fmt: skip
    from sparank.robustness import measure
    from sparank.store import DuplicateKeyError, measurement_key

    # the FGSM key is {"attack": "fgsm", resolution, tol, norm, ...} as before attacks had settings: stored ones still match
    settings = {**attack.settings(), **_group_settings(data, norm=norm, eps_max=eps_max)}
    key = measurement_key(run_id, settings, indices)
    found = store.find_measurement(key)
    if found is not None and not force:
        err.print(
            f"measurement [bold]{found.id}[/] ({attack.name}) of run {run_id} has these settings and inputs: reusing it (--force measures again)"
        )
        return run_id, found.id, found.summary, True
    model = model_of(run_id)
    label = f"{attack.name} ε* of {run_id}" + (f" (source {attack.source_name})" if attack.name == "transfer" else "")
    progress, on_progress = _measure_progress(len(x), label)
    with progress:
        result = measure(attack, model, x, y, norm=norm, eps_max=eps_max, batch_size=batch_size, progress=on_progress)  # type: ignore[arg-type]
    config = {
        "n": len(x), "eval_seed": eval_seed, "split": "test", "bounds": [0.0, 1.0], "batch_size": batch_size, "attack": attack.name,
        "dataset": data.name, **_data_record(data),
    }  # fmt: skip
    extra = None if result.certified is None else {"certified_fraction": float(result.certified.double().mean()) if len(x) else 1.0}
    try:
        mid = store.add_measurement(run_id, config=config, result=result, indices=indices, key=key, replace=force, extra_summary=extra)
    except DuplicateKeyError as race:  # another process stored the same measurement meanwhile
        mid = int(race.existing)
    return run_id, mid, {**result.summary().to_dict(), **(extra or {})}, False


def _store_best(store: Store, run_id: str, data: Any, indices: Any, x: Any, y: Any, *, norm: str, eps_max: float, batch_size: int,
                model_of: Callable[[str], Any]) -> dict[str, Any] | None:  # fmt: skip
    """Best ε* over every attack stored for these inputs and settings, with the masking flags; replaces the previous record."""
    from sparank.robustness import best_of, masking_flags
    from sparank.store import measurement_key

    group = _group_settings(data, norm=norm, eps_max=eps_max)
    index_list = [int(i) for i in indices.tolist()]
    members = []
    for m in store.measurements(run_id):
        c = m.config
        if c.get("attack", "fgsm") == "best" or any(c.get(k) != v for k, v in group.items() if k in c):
            continue
        if c.get("data_source", data.source) != data.source:
            continue
        table = store.brackets(m.id)
        if table.input_index.tolist() != index_list:
            continue
        members.append((m, table))
    latest: dict[str, Any] = {}
    for m, table in members:  # the newest measurement per attack and settings
        latest[json.dumps(m.config.get("attack_settings") or {"attack": m.config.get("attack", "fgsm")}, sort_keys=True)] = (m, table)
    if not latest:
        return None
    ids = [m.id for m, _ in latest.values()]
    key = measurement_key(run_id, {"attack": "best", **group}, indices)
    stored = store.find_measurement(key)
    if stored is not None and stored.config.get("of") == ids:  # nothing new since it was computed
        return {**stored.summary, "measurement": stored.id}
    results = [_stored_result(m, table) for m, table in latest.values()]
    best = best_of(results)
    flags = masking_flags(model_of(run_id), x, y, results, norm=norm, batch_size=batch_size)  # type: ignore[arg-type]
    config = {"n": len(x), "split": "test", "bounds": [0.0, 1.0], "attack": "best", "of": ids, "dataset": data.name, **_data_record(data)}
    mid = store.add_measurement(run_id, config=config, result=best, indices=indices, key=key, replace=True,
                                extra_summary={"of": ids, "masking": flags.to_dict()})  # fmt: skip
    summary = best.summary().to_dict()
    return {**summary, "measurement": mid, "of": ids, "masking": flags.to_dict()}


def _fmt_eps(v: Any, eps_max: Any) -> str:
    if v is None:
        return "n/a"
    if v == "inf" or v == float("inf"):
        return f"> {eps_max:g} (censored)"
    return f"{v:.4f}" if isinstance(v, (int, float)) else str(v)


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    """A measurement summary (``Summary.to_dict()``) as aligned lines: measure, value."""
    eps_max = summary.get("eps_max", 0.0)
    rows = [
        ("inputs", str(summary.get("n"))),
        ("clean accuracy", _num(summary.get("clean_accuracy"))),
        (f"AUC of A(ε) on [0, {eps_max:g}]", f"{_num(summary.get('auc'))}  ({_num(summary.get('auc_normalised'), 3)} of ε_max)"),
    ]
    for q, v in (summary.get("quantiles") or {}).items():
        rows.append((f"ε* {q} % quantile (correct inputs)", _fmt_eps(v, eps_max)))
    fractions = ("fooled_fraction", "clean_wrong_fraction", "censored_fraction", "no_direction_fraction")
    rows.append(("fooled / clean-wrong / censored / no direction", " / ".join(_num(summary.get(f), 3) for f in fractions)))
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    out.print(title, markup=False, soft_wrap=True)
    _print_lines(["  " + line for line in _summary_lines(summary)])


@app.command()
def measure(
    run_id: Annotated[str | None, typer.Argument(help="a run in the store (see `sparank show`)")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="measure a safetensors file instead of a stored run (needs --arch, --dataset)")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="model spec of --weights, e.g. mlp:300,100")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset of --weights: digits | fashion-mnist | mnist")] = None,
    attack: Annotated[
        list[str] | None,
        typer.Option("--attack", help="fgsm | pgd | fmn | deepfool | transfer | random; repeat for several (default fgsm)"),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="with --attack transfer: the run whose adversarials are transferred (both directions are measured)")
    ] = None,
    via: Annotated[str, typer.Option(help="with --attack transfer: fgsm (the source's FGSM ray) | pgd (the source's PGD steps)")] = "fgsm",
    steps: Annotated[int | None, typer.Option(help="iterations of pgd / fmn / deepfool (default: each attack's own)")] = None,
    restarts: Annotated[int, typer.Option(help="pgd: extra random starts at each ε")] = 0,
    n: Annotated[int | None, typer.Option("--n", help="evaluation inputs from the test split (default: all)")] = None,
    eval_seed: Annotated[int | None, typer.Option(help="draw the n inputs with this seed (>= 0) instead of taking the first n")] = None,
    norm: Annotated[str, typer.Option(help="linf (sign of the gradient) | l2 (normalised gradient)")] = "linf",
    eps_max: Annotated[float, typer.Option(help="largest ε tried; inputs still correct there are censored")] = 0.5,
    resolution: Annotated[float, typer.Option(help="scan step along the ray (fgsm, transfer, random; pgd's FGSM start)")] = 1e-2,
    tol: Annotated[float, typer.Option(help="width of the verified brackets along a ray")] = 1e-6,
    batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 256,
    force: Annotated[bool, typer.Option("--force", help="measure again even if this measurement is stored (replaces it)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summaries as JSON")] = False,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    threads: ThreadsOpt = None,
    certify: Annotated[
        bool, typer.Option("--certify", help="fgsm: prove the first crossing (every ε below ε* classified correctly), not only the scanned points")
    ] = False,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="fgsm: scan a frozen TorchScript copy of the model (faster; every bracket is then checked on the model as given)"
        ),
    ] = False,
) -> None:
    """Measure ε* (PROTOCOL §2-3) of a stored run or a safetensors file with one or more attacks, and store the results.

    Every attack's adversarials are re-checked by a forward pass. After the
    attacks, the best ε* over all attacks stored for these inputs and the
    model's gradient-masking flags are stored and shown. The same measurement
    (run, attack settings, inputs) is stored once: measuring it again shows the
    stored one; --force measures again.

    Examples: sparank measure r0001 --n 500 ;
    sparank measure r0001 --n 200 --attack fgsm --attack pgd --attack fmn --attack deepfool ;
    sparank measure r0002 --n 200 --attack transfer --source r0001 ;
    sparank measure --weights model.safetensors --arch mlp:300,100 --dataset fashion-mnist --n 1000
    """
    from sparank.store import Store

    attacks = list(attack or ["fgsm"])
    with _user_errors():
        _set_threads(threads)
        if (run_id is None) == (weights is None):
            raise ValueError("give either a RUN_ID or --weights FILE (with --arch and --dataset)")
        _check_measure_options(n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
        _check_attack_options(attacks=attacks, source=source, via=via, steps=steps, restarts=restarts, certify=certify, fast=fast)
        if weights is not None:
            _check_weights_options(weights, arch=arch, dataset=dataset)
        with Store(store, create=weights is not None) as opened:
            if weights is not None:
                run_id = _import_weights(weights, arch=arch, dataset=dataset, data_dir=data_dir, store=opened)  # type: ignore[arg-type]
            assert run_id is not None
            done, best = _measure_run(
                run_id=run_id, store=opened, data_dir=data_dir, n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max,
                resolution=resolution, tol=tol, batch_size=batch_size, force=force, attacks=attacks, source=source, via=via,
                steps=steps, restarts=restarts, certify=certify, fast=fast,
            )  # fmt: skip
        if as_json:
            records = [{"run": rid, "measurement": mid, "summary": summary} for rid, mid, summary, _ in done]
            if len(done) == 1:
                out.print_json(json.dumps({**records[0], "best": best}))
            else:
                out.print_json(json.dumps({"run": run_id, "measurements": records, "best": best}))
            return
        if len(done) == 1:
            rid, mid, summary, _ = done[0]
            name = summary.get("attack", "fgsm")
            what = "ε* along the FGSM ray" if name == "fgsm" else f"ε* by {name}"
            _print_summary(f"run {rid}: {what} ({norm}), measurement {mid}", summary)
            if "certified_fraction" in summary:
                share = math.floor(1000 * summary["certified_fraction"] + 1e-9) / 10  # rounded down: 100 % only when every input is
                out.print(f"certified: {share:.1f}% of inputs (the others scanned at resolution {resolution:g})", markup=False)
        else:
            with Store(store, readonly=True) as st:
                shown = {m.id: m for m in st.measurements()}
            ids = [mid for _, mid, _, _ in done] + ([best["measurement"]] if best is not None else [])
            out.print(
                f"run {run_id}: ε* by each attack ({norm}), and the best over all stored for these inputs:", markup=False, soft_wrap=True
            )
            _print_lines(["  " + t for t in _measurement_table([shown[i] for i in ids if i in shown], width=_inner(_screen_width()))])
        if best is not None:
            out.print(f"run {run_id}: " + _masking_line(best["masking"]), markup=False, soft_wrap=True)
        out.print(f"stored in {store.resolve()}", markup=False, soft_wrap=True)


def _masking_line(flags: dict[str, Any]) -> str:
    """The gradient-masking flags in one line: which are raised, and the numbers behind them."""
    parts = [f"zero/non-finite gradient {_num(flags.get('zero_gradient_fraction'), 3)}/{_num(flags.get('nonfinite_gradient_fraction'), 3)}"]
    if flags.get("unbounded_success") is not None:
        parts.append(f"unbounded-budget success {_num(flags['unbounded_success'], 3)}")
    if flags.get("beaten_fraction") is not None:
        parts.append(f"transfer/random beats white-box {_num(flags['beaten_fraction'], 3)}")
    if flags.get("fgsm_beats_pgd_fraction") is not None:
        parts.append(f"FGSM below PGD {_num(flags['fgsm_beats_pgd_fraction'], 3)}")
    raised = [k for k, v in (flags.get("flags") or {}).items() if v]
    head = "gradient masking: FLAGGED (" + ", ".join(raised) + ")" if raised else "gradient masking: no flag raised"
    return head + "; " + ", ".join(parts)


def _check_weights_options(weights: Path, *, arch: str | None, dataset: str | None) -> None:
    from sparank.models import parse_spec

    if arch is None or dataset is None:
        raise ValueError("--weights needs --arch (e.g. mlp:300,100) and --dataset (e.g. digits)")
    if weights.is_dir():
        raise ValueError(f"--weights {weights} is a directory; give a .safetensors file")
    if not weights.exists():
        raise ValueError(f"--weights file {weights} does not exist")
    if not weights.is_file():
        raise ValueError(f"--weights {weights} is not a regular file; give a .safetensors file")
    parse_spec(arch)


def _import_weights(weights: Path, *, arch: str, dataset: str, data_dir: Path | None, store: Store) -> str:
    """Record a user's safetensors file as an 'import' run (after checking it fits the architecture).

    The same file content (with the same --arch and --dataset) is imported
    once: importing it again reuses the first run.
    """
    from sparank.data import load_dataset
    from sparank.models import build_model, load_state, parse_spec
    from sparank.store import DuplicateKeyError, load_weights_file
    from sparank.structure import model_structure
    from sparank.train import accuracy

    _check_weights_options(weights, arch=arch, dataset=dataset)
    spec = parse_spec(arch)
    data = load_dataset(dataset, data_dir=data_dir)
    digest = _sha256(weights)
    key = "import:" + hashlib.sha256(json.dumps({"sha256": digest, "arch": str(spec), "dataset": data.name}).encode()).hexdigest()[:20]
    done = store.find_run(key)
    if done is not None:
        err.print(f"{escape(str(weights))} (same content, arch and dataset) is run [bold]{done.id}[/]: reusing it")
        return done.id
    model = build_model(spec, data.input_shape, data.num_classes)
    state = load_weights_file(weights)
    load_state(model, state, source=str(weights))
    config = {
        "dataset": data.name,
        **_data_record(data),
        "arch": str(spec),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "source": str(weights.resolve()),
        "sha256": digest,
        "regulariser": {"name": "unknown"},
    }
    metrics = {"test_accuracy": accuracy(model, data.test_x, data.test_y)}
    try:
        return store.add_run(
            kind="import",
            config=config,
            metrics=metrics,
            structure=model_structure(model).to_dict(),
            state_dict=model.state_dict(),
            key=key,
        )
    except DuplicateKeyError as race:
        return str(race.existing)


def _latest_summaries(store: Any) -> dict[str, dict[str, Any]]:
    """The newest FGSM measurement of each run (the headline ε*; other attacks are shown by `show RUN`)."""
    latest: dict[str, dict[str, Any]] = {}
    for m in store.measurements():
        if m.config.get("attack", "fgsm") == "fgsm":
            latest[m.run_id] = m.summary
    return latest


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}"
    return str(v) if v is not None else "-"


def _regulariser_cell(reg: dict[str, Any]) -> str:
    strength = reg.get("strength")
    name = str(reg.get("name", "-"))
    return f"{name}={strength:g}" if isinstance(strength, (int, float)) and not isinstance(strength, bool) else name


def _runs_table(runs: list[Any], latest: dict[str, dict[str, Any]], *, width: int | None) -> list[str]:
    headers = ["run", "kind", "dataset", "arch", "regulariser", "seed", "test_acc", "sparsity", "eff_rank", "AUC_eps*", "median_eps*"]
    rows = []
    for r in runs:
        s = latest.get(r.id)
        median = (s.get("quantiles") or {}).get("50") if s else None
        rows.append([
            r.id, r.kind, str(r.config.get("dataset", "-")), str(r.config.get("arch", "-")),
            # an audit's copy: what compressed it ("original" for the model audited) in the regulariser's place
            str(r.config["audit"]) if r.kind == "audit" and r.config.get("audit") else _regulariser_cell(r.config.get("regulariser") or {}),
            str((r.config.get("train") or {}).get("seed", "-")),
            _num((r.metrics or {}).get("test_accuracy", (r.metrics or {}).get("clean_accuracy")), 3),
            _num((r.structure or {}).get("sparsity"), 3),
            _num((r.structure or {}).get("mean_effective_rank_ratio"), 3),
            _num(s.get("auc")) if s else "-",
            ("censored" if median == "inf" else _num(median)) if s else "-",
        ])  # fmt: skip
    # most important first: what the run is and how robust it is; bookkeeping last
    keep = [0, 4, 9, 6, 10, 3, 2, 7, 8, 5, 1]
    return _table_lines(headers, rows, keep=keep, right=[5, 6, 7, 8, 9, 10], width=width)


def _run_lines(run: Any, measurements: list[Any], *, width: int | None) -> list[str]:
    """One run for people: config, metrics, history, structure, and each measurement's summary."""
    c = run.config
    lines = [f"run {run.id}  ({run.kind}, created {run.created})", ""]
    kv: list[tuple[str, str]] = [("dataset", str(c.get("dataset", "-")))]
    if c.get("data_source"):
        kv.append(("data source", str(c["data_source"])))
    for f in c.get("data_files", []):
        kv.append(("data file", str(f)))
    kv.append(
        (
            "arch",
            f"{c.get('arch', '-')}"
            + (f"  (input {'x'.join(map(str, c['input_shape']))}, {c.get('num_classes')} classes)" if c.get("input_shape") else ""),
        )
    )
    reg = dict(c.get("regulariser") or {})
    if reg:
        name = _regulariser_cell(reg)
        rest = ", ".join(f"{k}={v}" for k, v in reg.items() if k not in ("name", "strength"))
        kv.append(("regulariser", name + (f"  ({rest})" if rest else "")))
    if c.get("train"):
        kv.append(("training", ", ".join(f"{k}={v}" for k, v in c["train"].items())))
    for k in ("source", "sha256"):
        if c.get(k):
            kv.append((k, str(c[k])))
    for k, v in (run.metrics or {}).items():
        kv.append((k.replace("_", " "), _num(v) if isinstance(v, float) else str(v)))
    if run.weights:
        kv.append(("weights", str(run.weights)))
    pad = max(len(k) for k, _ in kv)
    lines += [f"  {k.ljust(pad)}  {v}" for k, v in kv]

    if run.history:
        lines += ["", "history"]
        headers = ["epoch", "phase", "loss", "penalty", "train_acc", "test_acc", "seconds"]
        rows = [
            [str(h.get("epoch")), str(h.get("phase", "-")), _num(h.get("loss")), _num(h.get("penalty")), _num(h.get("train_accuracy"), 3),
             _num(h.get("test_accuracy"), 3), _num(h.get("seconds"), 2)]
            for h in run.history
        ]  # fmt: skip
        lines += ["  " + t for t in _table_lines(headers, rows, keep=[0, 2, 5, 4, 1, 3, 6], right=[0, 2, 3, 4, 5, 6], width=_inner(width))]

    st = run.structure
    if st:
        lines += ["", f"structure: {st.get('n_weights')} weights, sparsity {_num(st.get('sparsity'))}, "
                  f"effective sparsity {_num(st.get('effective_sparsity'))}, mean effective-rank ratio {_num(st.get('mean_effective_rank_ratio'))}, "
                  f"spectral-norm product {_num(st.get('spectral_norm_product'))}"]  # fmt: skip
        headers = ["layer", "shape", "sparsity", "eff_rank", "full_rank", "stable_rank", "spectral_norm"]
        rows = [
            [name, "x".join(map(str, layer.get("shape", []))), _num(layer.get("sparsity"), 3), _num(layer.get("effective_rank"), 1),
             str(layer.get("full_rank", "-")), _num(layer.get("stable_rank"), 2), _num(layer.get("spectral_norm"), 3)]
            for name, layer in (st.get("layers") or {}).items()
        ]  # fmt: skip
        if rows:
            lines += ["  " + t for t in _table_lines(headers, rows, keep=[0, 2, 3, 4, 1, 6, 5], right=[2, 3, 4, 5, 6], width=_inner(width))]

    lines += ["", f"measurements: {len(measurements)}" + ("" if measurements else f" (sparank measure {run.id})")]
    if measurements:
        lines += ["  " + t for t in _measurement_table(measurements, width=_inner(width))]
        best = [m for m in measurements if m.config.get("attack") == "best" and m.summary.get("masking")]
        for m in best:
            lines += [
                "",
                f"  measurement {m.id} (best ε* over {', '.join(map(str, m.config.get('of', [])))}): "
                + _masking_line(m.summary["masking"]),
            ]
    return lines


def _measurement_table(measurements: list[Any], *, width: int | None) -> list[str]:
    """Measurements side by side: attack, settings, AUC, median ε*, the status fractions and refused claims."""
    headers = ["id", "attack", "settings", "n", "norm", "eps_max", "AUC", "median_eps*", "fooled", "censored", "no_dir", "rejected", "created"]  # fmt: skip
    rows = []
    for m in measurements:
        mc, sm = m.config, m.summary
        median = (sm.get("quantiles") or {}).get("50")
        rows.append([
            str(m.id), str(mc.get("attack", "fgsm")), _settings_cell(mc), str(mc.get("n", sm.get("n", "-"))), str(mc.get("norm", "-")),
            _num(mc.get("eps_max"), 3), _num(sm.get("auc")), "censored" if median == "inf" else _num(median),
            _num(sm.get("fooled_fraction"), 3), _num(sm.get("censored_fraction"), 3), _num(sm.get("no_direction_fraction"), 3),
            str(sm.get("rejected", 0)), str(m.created)[:19],
        ])  # fmt: skip
    return _table_lines(headers, rows, keep=[0, 1, 6, 7, 8, 9, 3, 4, 5, 10, 11, 2, 12], right=[0, 3, 5, 6, 7, 8, 9, 10, 11], width=width)


def _settings_cell(config: dict[str, Any]) -> str:
    """An attack's own settings, briefly (the norm, ε_max and n have their own columns)."""
    settings = dict(config.get("attack_settings") or {})
    settings.pop("attack", None)
    if config.get("attack", "fgsm") == "fgsm" and not settings:  # stored before attacks had settings
        settings = {k: config[k] for k in ("resolution", "tol") if k in config}
    if config.get("attack") == "best":
        return "of " + ",".join(map(str, config.get("of", [])))
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()) or "-"


def _inner(width: int | None) -> int | None:
    return None if width is None else max(width - 2, 20)


@app.command()
def show(
    run_id: Annotated[str | None, typer.Argument(help="show one run in detail")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """List the runs in a store with their latest measurement, or one run in detail.

    Reads the store read-only, so a store on a read-only mount can be shown.

    Example: sparank show --store sparank-results ; sparank show r0001 ; sparank show r0001 --json
    """
    from sparank.store import Store

    with _user_errors(), Store(store, readonly=True) as st:
        if run_id is not None:
            run = st.get_run(run_id)
            measurements = st.measurements(run_id)
            if not as_json:
                _print_lines(_run_lines(run, measurements, width=_screen_width()))
                return
            record = {
                "id": run.id, "kind": run.kind, "created": run.created, "config": run.config, "metrics": run.metrics,
                "history": run.history, "weights": str(run.weights) if run.weights else None,
                "structure": _structure_brief(run.structure),
                "measurements": [{"id": m.id, "created": m.created, "config": m.config, "summary": _brief(m.summary)} for m in measurements],
            }  # fmt: skip
            out.print_json(json.dumps(record, default=str))
            return
        runs = st.runs()
        latest = _latest_summaries(st)
        if as_json:
            rows = [
                {"id": r.id, "kind": r.kind, "config": r.config, "metrics": r.metrics, "structure": _structure_brief(r.structure),
                 "latest_measurement": latest.get(r.id)}
                for r in runs
            ]  # fmt: skip
            out.print_json(json.dumps(rows, default=str))
            return
        if not runs:
            out.print(f"no runs in {store} yet: try `sparank train --store {store}`", markup=False, soft_wrap=True)
            return
        out.print(f"runs in {store} (AUC and median ε* of the latest measurement):", markup=False, soft_wrap=True)
        _print_lines(_runs_table(runs, latest, width=_screen_width()))


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith("curve_")}


def _structure_brief(structure: dict[str, Any] | None) -> dict[str, Any] | None:
    if structure is None:
        return None
    brief = {k: v for k, v in structure.items() if k != "layers"}
    brief["layers"] = {
        name: {k: v for k, v in layer.items() if k != "singular_values"} for name, layer in structure.get("layers", {}).items()
    }
    return brief


def _strength_range(cls: Any) -> str:
    """The allowed strengths as an interval, open where the end is refused (``factorised``: ``(0, 1]``)."""
    low, high = cls.strength_range

    def accepted(value: float) -> bool:
        if not math.isfinite(value):
            return False
        try:
            cls(value)
        except ValueError:
            return False
        return True

    left = "[" if accepted(low) else "("
    right = "]" if accepted(high) else ")"
    return f"{left}{low:g}, {'∞' if math.isinf(high) else format(high, 'g')}{right}"


@app.command()
def regularisers() -> None:
    """List the regularisers with what each does and what its strength means.

    Example: sparank regularisers
    """
    from sparank.regularisers import REGISTRY

    table = Table(title="regularisers (PROTOCOL §5)", header_style="bold")
    for col in ("name", "what it does", "strength", "range", "default"):
        table.add_column(col, no_wrap=col in ("name", "range", "default"))
    for name, cls in REGISTRY.items():
        table.add_row(
            name,
            cls.summary,
            cls.strength_meaning or "takes none",
            _strength_range(cls) if cls.strength_meaning else "-",
            "-" if cls.default_strength is None else f"{cls.default_strength:g}",
        )
    out.print(table)


def _parse_lambdas(text: str) -> list[float]:
    """Comma-separated positive finite λ values; ValueError naming ``--lambdas``."""
    return _parse_floats("--lambdas", text, low=0.0, high=math.inf, example="1e-4,1e-3,1e-2", open_low=True)


@app.command()
def linear(
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist")] = "digits",
    out_dir: Annotated[Path, typer.Option("--out", help="where l1_path_<dataset>.{png,svg,csv,md} are written")] = Path(
        "sparank-results/linear"
    ),
    n: Annotated[int | None, typer.Option("--n", help="test inputs measured, the first N (default: all)")] = None,
    lambdas: Annotated[
        str | None, typer.Option(help="comma-separated λ values (default: 12 log-spaced from 1e-4·λ_max to 0.9·λ_max)")
    ] = None,
    methods: Annotated[str, typer.Option(help="comma-separated subset of l1, prox_l1, sklearn")] = "l1,prox_l1,sklearn",
    norm: Annotated[str, typer.Option(help="linf (FGSM) | l2")] = "linf",
    eps_max: Annotated[float, typer.Option(help="largest ε considered; inputs still correct there are censored")] = 0.5,
    epochs: Annotated[
        int | None, typer.Option(help="epochs of l1/prox_l1 training (default: 100 on digits, 10 above 10,000 training inputs)")
    ] = None,
    sklearn_max_train: Annotated[
        int | None, typer.Option(help="fit scikit-learn on the first N training inputs (default: all on digits, 10,000 above)")
    ] = None,
    sklearn_max_iter: Annotated[int | None, typer.Option(help="SAGA epochs per λ at most (default: 3000 on digits, 100 above)")] = None,
    seeds: Annotated[
        str, typer.Option(help="comma-separated training seeds (data order, initialisation); ratios pool over them")
    ] = "0,1,2",
    data_dir: DataDirOpt = None,
    store: Annotated[Path | None, typer.Option("--store", help="also record every model and measurement in this results store")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """The L1 path of multinomial logistic regression with exact FGSM ε* at every λ (PROTOCOL §7).

    Example: sparank linear --dataset digits --out sparank-results/linear
    """
    from dataclasses import replace

    from sparank.attacks import check_norm
    from sparank.data import load_dataset
    from sparank.linear_path import PATH_METHODS, default_sklearn_config, default_train_config, run_l1_path
    from sparank.store import Store

    with _user_errors():
        # every option first: nothing is read or fitted before all of them are known to be good
        _set_threads(threads)
        _check_dataset_name(dataset)
        _check_int("--n", n, low=1, fix="leave --n out to measure the whole test split")
        _check_int("--epochs", epochs, low=1)
        _check_int("--sklearn-max-train", sklearn_max_train, low=1)
        _check_int("--sklearn-max-iter", sklearn_max_iter, low=1)
        _check_positive("--eps-max", eps_max, fix="e.g. 0.5 for linf on [0, 1] pixels")
        with _as_options({"norm": "--norm"}):
            check_norm(norm)
        grid = None if lambdas is None else _parse_lambdas(lambdas)
        try:
            seed_list = [int(v) for v in seeds.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {seeds!r}") from None
        if not seed_list or any(v < 0 for v in seed_list):
            raise ValueError(f"--seeds must be comma-separated non-negative integers, e.g. 0,1,2; got {seeds!r}")
        method_list = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in method_list if m not in PATH_METHODS]
        if unknown or not method_list:
            raise ValueError(f"--methods must be a comma-separated subset of {', '.join(PATH_METHODS)}, got {methods!r}")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} is a file; give a directory for the figure, table and CSV")
        out_dir.mkdir(parents=True, exist_ok=True)
        store_ctx: Any = Store(store) if store is not None else contextlib.nullcontext()
        with store_ctx as opened:
            data = load_dataset(dataset, data_dir=data_dir)
            if n is not None and n > len(data.test_y):
                raise ValueError(f"--n must be at most {len(data.test_y)} (the {data.name} test set size), got {n}")
            train_config = default_train_config(data)
            if epochs is not None:
                train_config = replace(train_config, epochs=epochs)
            sk_config = default_sklearn_config(data)
            if sklearn_max_train is not None:
                sk_config = replace(sk_config, max_train=sklearn_max_train)
            if sklearn_max_iter is not None:
                sk_config = replace(sk_config, max_iter=sklearn_max_iter)
            progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), console=err
            )
            with progress:
                task = progress.add_task(f"L1 path on {data.name}", total=None)

                def on_fit(done: int, total: int, message: str) -> None:
                    progress.update(task, completed=done, total=total, description=escape(f"L1 path on {data.name}: {message}"))

                result = run_l1_path(
                    data, out_dir=out_dir, lambdas=grid, methods=method_list,
                    store=opened, progress=on_fit, n_eval=n, norm=norm, eps_max=eps_max, seeds=seed_list,  # type: ignore[arg-type]
                    train_config=train_config, sklearn_config=sk_config,
                )  # fmt: skip
        headers = ["method", "lambda", "accuracy", "sparsity", "L1_norm", "AUC_eps*", "median_eps*", "vs_ref", "vs_rescaled", "vs_L2_acc"]
        rows = []
        for p in result.points:  # the first seed's point; ratios pool every seed (CIs in the .md table)
            if p.method == "l2" or p.seed != result.seeds[0]:
                continue
            median = "n/a" if p.median is None else ("censored" if p.median == float("inf") else f"{p.median:.4f}")
            ratios = [c.ratio for c in result.comparisons if c.method == p.method and c.lam == p.lam]
            shown = ["n/a" if r is None else f"{r:.3f}" for r in (ratios + [None] * 3)[:3]]
            rows.append(
                [
                    p.method,
                    f"{p.lam:.3g}",
                    f"{p.clean_accuracy:.3f}",
                    f"{p.sparsity:.3f}",
                    f"{p.l1_norm:.4g}",
                    f"{p.auc:.4f}",
                    median,
                    *shown,
                ]
            )
        out.print(f"L1 path on {data.name}: exact FGSM ε* ({norm}) over {result.n_eval} test inputs", markup=False, soft_wrap=True)
        _print_lines(
            _table_lines(headers, rows, keep=[0, 1, 5, 2, 6, 7, 8, 9, 3, 4], right=[1, 2, 3, 4, 5, 6, 7, 8, 9], width=_screen_width())
        )
        for kind, path in result.files.items():
            out.print(f"{kind}: {path}", markup=False, soft_wrap=True)
        if store is not None:
            out.print(f"stored {len(result.points)} runs in {store.resolve()}", markup=False, soft_wrap=True)


@app.command()
def demo(
    store: StoreOpt = Path("sparank-results/demo"),
    threads: ThreadsOpt = None,
) -> None:
    """Train a dense MLP on digits, measure ε* on the whole test set, print the summary and where it is stored.

    Run again, it reuses the stored run and measurement.

    Example: sparank demo
    """
    from sparank.store import Store

    with _user_errors():
        _set_threads(threads)
        with Store(store) as opened:
            run_id = _train_run(
                dataset="digits", arch="mlp:300,100", epochs=20, seed=0, lr=1e-3, batch_size=64, optimizer="adam",
                regulariser="none", strength=None, data_dir=None, store=opened,
            )  # fmt: skip
            done, best = _measure_run(
                run_id=run_id, store=opened, data_dir=None, n=None, eval_seed=None, norm="linf", eps_max=0.5,
                resolution=1e-2, tol=1e-6, batch_size=256,
            )  # fmt: skip
        _, mid, summary, _ = done[0]
        _print_summary(f"digits, dense MLP 64-300-100-10 (run {run_id}): ε* along the FGSM ray", summary)
        if best is not None:
            out.print(_masking_line(best["masking"]), markup=False, soft_wrap=True)
        out.print(
            f"results stored in {store.resolve()} (run {run_id}, measurement {mid}); `sparank show --store {store}` lists them",
            markup=False,
            soft_wrap=True,
        )


@app.command()
def study(
    config: Annotated[Path, typer.Argument(help="the study's TOML file, e.g. configs/digits.toml")],
    store: Annotated[Path | None, typer.Option("--store", help="results store (default: sparank-results/<study name>)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="tcp://HOST:PORT of a running Dask scheduler (default: a LocalCluster here)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes of the local cluster (default: cores // threads-per-worker; 0: serial, no Dask)")] = None,
    threads_per_worker: Annotated[int, typer.Option(help="torch threads per run")] = 1,
    out_dir: Annotated[Path | None, typer.Option("--out", help="where the report goes (default: STORE/report)")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run a study: train the grid (with dense counterparts and L2 controls), measure every model, compare, write the report.

    Runs already in the store are skipped, so an interrupted study resumes where it stopped;
    only this process writes the store, as each run finishes.

    Example: sparank study configs/digits.toml ; sparank study configs/fashion-mlp.toml --scheduler tcp://10.0.0.5:8786
    """
    from sparank.report import write_report
    from sparank.store import Store
    from sparank.study import load_config, run_study

    with _user_errors():
        _check_int("--workers", workers, low=0, fix="0 runs serially; leave it out for one worker per core")
        _check_int("--threads-per-worker", threads_per_worker, low=1, fix="e.g. 1")
        if scheduler is not None and workers is not None:
            raise ValueError("--workers sizes a local cluster; with --scheduler the cluster's own workers run the study: leave --workers out")
        if scheduler is not None and "://" not in scheduler:
            raise ValueError(f"--scheduler must be a scheduler address such as tcp://HOST:8786, got {scheduler!r}")
        if data_dir is not None:
            os.environ["SPARANK_DATA"] = str(data_dir)  # the workers read the data where the driver does
        cfg = load_config(config)
        path = store if store is not None else DEFAULT_STORE / cfg.name
        with Store(path) as opened:
            outcome = run_study(cfg, opened, scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker)
            paths = write_report(
                opened, out_dir if out_dir is not None else path / "report", title=f"sparank study: {cfg.name}", config=cfg,
                reference_eps=cfg.measure.reference_eps,
            )  # fmt: skip
        minutes = outcome.seconds / 60
        out.print(
            f"study {cfg.name}: {len(outcome.specs)} runs ({len(outcome.skipped)} already stored, {len(outcome.recorded)} done now) "
            f"in {minutes:.1f} min; store {path.resolve()}",
            markup=False,
            soft_wrap=True,
        )
        out.print(f"report: {paths.html.resolve()}", markup=False, soft_wrap=True)
        if outcome.failed:
            for key, why in outcome.failed.items():
                err.print(f"failed run {key}: {escape(why)}")
            raise typer.Exit(1)


@app.command()
def report(
    store: Annotated[Path, typer.Argument(help="the results store to report on (a directory holding sparank.sqlite)")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="folder for report.html, report.md, runs.csv, comparisons.csv and figures/ (default: STORE/report)"),
    ] = None,
    title: Annotated[str | None, typer.Option(help="the report's title (default: 'sparank study report: <store folder>')")] = None,
) -> None:
    """Write a store's study report: one self-contained HTML file (figures embedded), a Markdown summary, CSVs of every run and comparison.

    Every regularised run is compared with its dense counterpart and its L2 control (PROTOCOL §6);
    the store is read read-only.

    Example: sparank report sparank-results --out report
    """
    from sparank.report import write_report
    from sparank.store import Store

    with _user_errors(), Store(store, readonly=True) as st:
        paths = write_report(st, out_dir if out_dir is not None else store / "report", title=title)
    out.print(f"report: {paths.html}", markup=False, soft_wrap=True)
    out.print(
        f"with {paths.markdown.name}, {paths.runs_csv.name}, {paths.comparisons_csv.name} and {len(paths.figures)} figures in {paths.html.parent}",
        markup=False,
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- export and audit (issue 11)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="a run in the store (see `sparank show`)")],
    file: Annotated[Path, typer.Argument(help="where to write its weights, e.g. model.safetensors")],
    force: Annotated[bool, typer.Option("--force", help="replace FILE if it exists")] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write a stored run's weights to a safetensors file (e.g. to audit it, or to use it elsewhere).

    Example: sparank export r0001 model.safetensors ; then
    sparank audit --model mlp:300,100 --weights model.safetensors --dataset digits
    """
    from sparank.store import Store, save_weights

    with _user_errors():
        if file.is_dir():
            raise ValueError(f"FILE {file} is a directory; give a file name such as {file / 'model.safetensors'}")
        if file.exists() and not force:
            raise ValueError(f"FILE {file} exists; add --force to replace it, or give another name")
        if not file.parent.is_dir():
            raise ValueError(f"the folder {file.parent} of FILE does not exist; create it or give another path")
        with Store(store, readonly=True) as st:
            run = st.get_run(run_id)
            state = st.load_weights(run_id)
        save_weights(file, state)
        arch, dataset = run.config.get("arch", "?"), run.config.get("dataset", "?")
        out.print(f"run {run_id} ({arch} on {dataset}): {len(state)} tensors written to {file}", markup=False, soft_wrap=True)
        out.print(f"audit it with: sparank audit --model {arch} --weights {file} --dataset {dataset}", markup=False, soft_wrap=True)


def _parse_floats(option: str, text: str, *, low: float, high: float, example: str, open_low: bool = False) -> list[float]:
    """Comma-separated finite numbers in ``[low, high]`` (``(low, high]`` with ``open_low``); ValueError naming ``option``."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{option}: {part!r} is not a number; give comma-separated numbers, e.g. {example}") from None
        if not (math.isfinite(value) and (low < value if open_low else low <= value) and value <= high):
            where = f"> {low:g}" if open_low and high == math.inf else f"in {'(' if open_low else '['}{low:g}, {high:g}]"
            raise ValueError(f"{option}: {part} must be a finite number {where}; give e.g. {example}")
        values.append(value)
    if not values:
        raise ValueError(f"{option} {text!r} holds no values; give comma-separated numbers, e.g. {example}")
    return values


@app.command()
def audit(
    model: Annotated[str, typer.Option("--model", help="an architecture spec (mlp:300,100) or your own package.module:factory")],
    weights: Annotated[Path, typer.Option(help="the trained weights, a safetensors file (see `sparank export`)")],
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist: the test split is audited, the train split fine-tunes")],
    families: Annotated[str, typer.Option(help="comma-separated: magnitude (per layer), global, structured, svd")] = "magnitude,global,structured,svd",
    sparsities: Annotated[str, typer.Option(help="levels of the pruning families: fractions of weights (structured: of neurons) set to 0")] = "0.5,0.7,0.8,0.9,0.95",
    rank_fractions: Annotated[str, typer.Option(help="levels of svd: the fraction of each layer's rank kept")] = "0.5,0.25,0.1,0.05",
    fine_tune_epochs: Annotated[int, typer.Option(help="fine-tune each copy this many epochs on the train split, mask / rank held fixed")] = 0,
    fine_tune_lr: Annotated[float, typer.Option(help="Adam's step while fine-tuning")] = 1e-3,
    accuracy_tolerance: Annotated[float, typer.Option(help="the clean accuracy an acceptable copy may lose, in percentage points")] = 1.0,
    n: Annotated[int | None, typer.Option("--n", help="audit inputs from the test split (default: 1000, or all if fewer)")] = None,
    eval_seed: Annotated[int | None, typer.Option(help="draw the n inputs with this seed (>= 0) instead of taking the first n")] = None,
    attack: Annotated[list[str] | None, typer.Option("--attack", help="cross-check pgd | fmn | deepfool on the first --attack-n inputs; repeat for several")] = None,
    attack_n: Annotated[int, typer.Option(help="inputs the cross-checks, best ε* and masking flags use")] = 100,
    steps: Annotated[int | None, typer.Option(help="iterations of pgd / fmn / deepfool (default: each attack's own)")] = None,
    restarts: Annotated[int, typer.Option(help="pgd: extra random starts at each ε")] = 0,
    norm: Annotated[str, typer.Option(help="linf | l2")] = "linf",
    eps_max: Annotated[float, typer.Option(help="largest ε tried; inputs still correct there are censored")] = 0.5,
    resolution: Annotated[float, typer.Option(help="scan step along the FGSM ray")] = 1e-2,
    tol: Annotated[float, typer.Option(help="width of the verified brackets")] = 1e-6,
    certify: Annotated[
        bool, typer.Option("--certify", help="prove FGSM ε*'s first crossing (every ε below it classified correctly), not the scan's")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 256,
    seed: Annotated[int, typer.Option(help="the bootstrap's draws and the fine-tuning's data order")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.html, report.md, the CSVs and figures/")] = Path("audit-report"),
    store_dir: Annotated[
        Path | None,
        typer.Option("--store", help="record the original and every copy in this results store; a rerun measures only what is missing"),
    ] = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Audit your own trained model: compress copies of it (pruning, rank truncation) and report what each costs in robustness.

    Every copy is measured on the same test inputs as the original (clean accuracy, FGSM ε*,
    the cross-checks, masking flags, structure) and compared with it (median ε* ratio with a
    bootstrap interval, AUC and accuracy changes, Holm-corrected verdict). The report opens with,
    per family, the strongest setting not significantly less robust and within the accuracy tolerance.

    With --store DIR the original and every copy are recorded there (runs of kind "audit", with
    their weights and measurements) as each finishes; an interrupted audit run again with the same
    options measures only what is missing and gives the same report.

    Examples: sparank audit --model mlp:300,100 --weights model.safetensors --dataset digits ;
    sparank audit --model examples.tiny_cnn:tiny_cnn --weights cnn.safetensors --dataset digits --fine-tune-epochs 2 --attack pgd
    """
    import contextlib
    import dataclasses

    from sparank.audit import audit as run_audit
    from sparank.audit import import_factory, is_import_path, load_model
    from sparank.audit_report import certified_counts, write_audit_report
    from sparank.compress import FAMILIES
    from sparank.data import eval_subset, load_dataset
    from sparank.models import parse_spec
    from sparank.store import Store, load_weights_file

    attacks = list(attack or [])
    with _user_errors():
        _set_threads(threads)
        if is_import_path(model):
            import_factory(model)  # a missing module or attribute is reported before any data are read
        else:
            try:
                parse_spec(model)
            except ValueError as exc:
                raise ValueError(f"--model: {_first_line(exc)}; or give your own model as package.module:factory") from None
        if weights.is_dir():
            raise ValueError(f"--weights {weights} is a directory; give a .safetensors file")
        if not weights.is_file():
            raise ValueError(f"--weights file {weights} does not exist; `sparank export RUN FILE` writes a stored run's weights")
        _check_dataset_name(dataset)
        chosen = [f.strip() for f in families.split(",") if f.strip()]
        for f in chosen:
            if f not in FAMILIES:
                raise ValueError(f"--families: unknown family {f!r}; choose from {', '.join(FAMILIES)}")
        levels = _parse_floats("--sparsities", sparsities, low=0.0, high=1.0, example="0.5,0.7,0.9")
        ranks = _parse_floats("--rank-fractions", rank_fractions, low=0.0, high=1.0, example="0.5,0.25,0.1", open_low=True)
        _check_int("--fine-tune-epochs", fine_tune_epochs, low=0, fix="0 audits one-shot compression")
        _check_positive("--fine-tune-lr", fine_tune_lr, fix="e.g. 1e-3")
        if not (math.isfinite(accuracy_tolerance) and 0 <= accuracy_tolerance < 100):
            raise ValueError(f"--accuracy-tolerance must be in [0, 100) percentage points, got {accuracy_tolerance}; e.g. 1")
        _check_measure_options(n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
        for name in attacks:
            if name not in ("pgd", "fmn", "deepfool"):
                raise ValueError(f"--attack must be one of pgd, fmn, deepfool (FGSM always runs), got {name!r}")
        if len(set(attacks)) != len(attacks):
            raise ValueError(f"--attack names an attack twice ({', '.join(attacks)}); give each once")
        _check_int("--attack-n", attack_n, low=1)
        _check_int("--steps", steps, low=1, fix="leave it out for each attack's default")
        _check_int("--restarts", restarts, low=0, fix="0 runs PGD from the FGSM start only")
        _check_int("--seed", seed, low=0)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} is a file; give a folder")

        data = load_dataset(dataset, data_dir=data_dir)
        total = len(data.test_y)
        if n is not None and n > total:
            raise ValueError(f"--n must be at most {total} (the {data.name} test set size), got {n}")
        state = load_weights_file(weights)
        net = load_model(model, data.input_shape, data.num_classes, weights=state, source=str(weights))
        indices, x, y = eval_subset(data, n if n is not None else min(1000, total), seed=eval_seed)
        context = {"weights_file": str(weights), "weights_sha256": _sha256(weights), "dataset": data.name, "split": "test",
                   "eval_seed": eval_seed, **_data_record(data)}  # fmt: skip
        progress = Progress(
            TextColumn("[bold]audit[/] {task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("models"),
            TimeElapsedColumn(), console=err, transient=True,
        )  # fmt: skip
        task = progress.add_task("original", total=1)

        def on_model(label: str, done: int, of: int) -> None:
            progress.update(task, description=escape(label), completed=done, total=of)

        # the store, if any, is opened (and checked writable) before the first model is measured
        opened = contextlib.nullcontext(None) if store_dir is None else Store(store_dir)
        with opened as stored, progress, _as_options({"tol": "--tol", "eps_max": "--eps-max"}):
            result = run_audit(
                net, x, y, bounds=(0.0, 1.0), train_data=(data.train_x, data.train_y) if fine_tune_epochs else None,
                families=chosen, sparsities=levels, rank_fractions=ranks, fine_tune_epochs=fine_tune_epochs, fine_tune_lr=fine_tune_lr,
                norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, certify=certify, attacks=attacks, attack_n=attack_n, steps=steps,
                restarts=restarts, accuracy_tolerance=accuracy_tolerance / 100, seed=seed, batch_size=batch_size, progress=on_model,
                store=stored, model_name=model, input_indices=indices, context=context,
            )  # fmt: skip
        which = f"the first {len(x)}" if eval_seed is None else f"{len(x)} drawn with seed {eval_seed}"
        result = dataclasses.replace(
            result, model_note=f"model {model} with weights {weights}", inputs_note=f"{data.name} test split, {which} of {total} inputs"
        )
        paths = write_audit_report(result, out_dir)
        out.print(result.answer(), markup=False, soft_wrap=True)
        rows = [
            [c.compression.family, f"{c.compression.level:g}", f"{100 * m.clean_accuracy:.1f}", f"{100 * c.accuracy_change:+.1f}", f"{c.fgsm.ratio.estimate:.3g}",
             f"[{c.fgsm.ratio.low:.3g},{c.fgsm.ratio.high:.3g}]", c.fgsm_verdict.replace(" ", "-"), "yes" if c.acceptable else "no"]
            for m, c in zip(result.compressed, result.comparisons)
        ]  # fmt: skip
        head = ["family", "level", "acc%", "Δacc", "ε*-ratio", "interval", "verdict", "ok"]
        _print_lines(_table_lines(head, rows, keep=[0, 1, 6, 4, 7, 3, 2, 5], right=[1, 2, 3, 4], width=_screen_width()))
        if certify:
            proved, pairs = certified_counts(result)
            rest = f" (the others scanned at resolution {resolution:g})" if proved < pairs else ""
            out.print(f"certified: FGSM ε* of {proved} of {pairs} correctly classified (model, input) pairs{rest}", markup=False, soft_wrap=True)
        out.print(f"audit of {1 + len(rows)} models in {result.seconds:.1f} s; report: {paths.html}", markup=False, soft_wrap=True)
        if store_dir is not None:
            out.print(
                f"stored in {store_dir}: runs {result.run_ids[0]} (original) to {result.run_ids[-1]}, kind audit; "
                f"{len(result.recorded)} measurements made now, the others read back",
                markup=False, soft_wrap=True,
            )  # fmt: skip


def main() -> None:  # pragma: no cover - entry point for `python -m sparank`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
