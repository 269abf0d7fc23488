"""The ``sparank`` command: thin wrappers that parse options and call the modules.

Every user mistake (unknown dataset, bad spec, missing file, weights that do
not fit) is one line on stderr and exit status 2; set SPARANK_DEBUG=1 for the
traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="sparank",
    help="Does sparse or low-rank regularisation make a classifier easier to fool? Train, measure ε* along the FGSM ray, compare.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_STORE = Path("sparank-results")

StoreOpt = Annotated[Path, typer.Option("--store", help="results store directory (SQLite + safetensors weights)")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads for torch (default: all cores available)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="directory holding the IDX files (else $SPARANK_DATA, /usr/share/datasets/<name>)")]


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line and exit status 2."""
    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if os.environ.get("SPARANK_DEBUG"):
            raise
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        err.print("interrupted: everything already written to the store is kept")
        raise typer.Exit(130) from None


def _set_threads(threads: int | None) -> None:
    import torch

    n = threads if threads is not None else _default_threads()
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def _epoch_progress(total: int, label: str) -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  test acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = progress.add_task(label, total=total, loss="-", acc="-")
    return progress, task


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
    store_path: Path,
) -> str:
    """Train one model, store it with its config, history, metrics and structure; return the run id."""
    from sparank.data import load_dataset
    from sparank.models import parse_spec
    from sparank.regularisers import get as get_regulariser
    from sparank.store import Store
    from sparank.structure import model_structure
    from sparank.train import TrainConfig, train_model

    spec = parse_spec(arch)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed)  # type: ignore[arg-type]
    reg = get_regulariser(regulariser, strength)
    data = load_dataset(dataset, data_dir=data_dir)
    store = Store(store_path)
    identity = {"dataset": data.name, "arch": str(spec), "train": config.to_dict(), "regulariser": reg.config(None)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    done = store.find_run(key)
    if done is not None:
        out.print(f"run [bold]{done.id}[/] already has this config (a seed gives the same weights): reusing it")
        return done.id
    progress, task = _epoch_progress(epochs, f"train {spec} on {data.name} [{reg.name}]")

    def on_epoch(record: Any) -> None:
        acc = f"{record.test_accuracy:.3f}" if record.test_accuracy is not None else "-"
        progress.update(task, advance=1 if record.phase == "train" else 0, loss=f"{record.loss:.4f}", acc=acc)

    with progress:
        model, history = train_model(spec, data, config, reg, on_epoch=on_epoch)
    structure = model_structure(model)
    run_config = {
        "dataset": data.name,
        "data_source": getattr(data, "source", ""),
        "arch": str(spec),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "train": config.to_dict(),
        "regulariser": reg.config(model),
    }
    final = history[-1] if history else None
    metrics = {
        "test_accuracy": final.test_accuracy if final else None,
        "train_accuracy": final.train_accuracy if final else None,
        "n_train": len(data.train_x),
        "n_test": len(data.test_x),
    }
    run_id = store.add_run(
        kind="train",
        config=run_config,
        history=[vars(h) for h in history],
        metrics=metrics,
        structure=structure.to_dict(),
        state_dict=model.state_dict(),
        key=key,
    )
    acc = f"{final.test_accuracy:.4f}" if final and final.test_accuracy is not None else "n/a"
    out.print(f"run [bold]{run_id}[/]: {spec} on {data.name}, {reg.name}, test accuracy {acc}, sparsity {structure.sparsity:.3f}")
    return run_id


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist")] = "digits",
    arch: Annotated[str, typer.Option(help="model spec: linear, mlp[:w1,w2,...], cnn[:c1,c2,hidden]")] = "mlp",
    epochs: Annotated[int, typer.Option(help="passes over the training set")] = 20,
    seed: Annotated[int, typer.Option(help="seeds initialisation and shuffling")] = 0,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="mini-batch size")] = 64,
    optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
    regulariser: Annotated[str, typer.Option(help="method name (see `sparank regularisers`)")] = "none",
    strength: Annotated[float | None, typer.Option(help="the method's strength (see `sparank regularisers`)")] = None,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    threads: ThreadsOpt | None = None,
) -> None:
    """Train a classifier and store it with its config, history, metrics and structure.

    Example: sparank train --dataset digits --arch mlp:300,100 --epochs 20 --seed 0
    """
    with _user_errors():
        _set_threads(threads)
        _train_run(
            dataset=dataset, arch=arch, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size, optimizer=optimizer,
            regulariser=regulariser, strength=strength, data_dir=data_dir, store_path=store,
        )  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _measure_run(
    *,
    run_id: str,
    store_path: Path,
    data_dir: Path | None,
    n: int | None,
    eval_seed: int | None,
    norm: str,
    eps_max: float,
    resolution: float,
    tol: float,
    batch_size: int,
) -> tuple[int, Any]:
    """Measure ε* on a stored run's model and store the brackets; returns (measurement id, summary)."""
    from sparank.data import eval_subset, load_dataset
    from sparank.models import build_model, load_state
    from sparank.robustness import check_measure_args, fgsm_robustness
    from sparank.store import Store

    check_measure_args(norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)
    store = Store(store_path, create=False)
    run = store.get_run(run_id)
    data = load_dataset(run.config["dataset"], data_dir=data_dir)
    model = build_model(run.config["arch"], data.input_shape, data.num_classes)
    load_state(model, store.load_weights(run_id), source=f"run {run_id}")
    indices, x, y = eval_subset(data, n, seed=eval_seed)
    with err.status(f"measuring ε* on {len(x)} {data.name} inputs ({norm}, h={resolution:g}, tol={tol:g})..."):
        result = fgsm_robustness(model, x, y, norm=norm, eps_max=eps_max, resolution=resolution, tol=tol, batch_size=batch_size)  # type: ignore[arg-type]
    config = {"n": len(x), "eval_seed": eval_seed, "split": "test", "bounds": [0.0, 1.0], "batch_size": batch_size, "attack": "fgsm"}
    mid = store.add_measurement(run_id, config=config, result=result, indices=indices)
    return mid, result.summary()


def _print_summary(title: str, summary: Any) -> None:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def fmt(v: float | None) -> str:
        if v is None:
            return "n/a"
        return f"> {summary.eps_max:g} (censored)" if v == float("inf") else f"{v:.4f}"

    table.add_row("inputs", str(summary.n))
    table.add_row("clean accuracy", f"{summary.clean_accuracy:.4f}")
    table.add_row(f"AUC of A(ε) on [0, {summary.eps_max:g}]", f"{summary.auc:.4f}  ({summary.auc_normalised:.3f} of ε_max)")
    for q, v in summary.quantiles.items():
        table.add_row(f"ε* {q} % quantile (correct inputs)", fmt(v))
    table.add_row("fooled / clean-wrong / censored", f"{summary.fooled_fraction:.3f} / {summary.clean_wrong_fraction:.3f} / {summary.censored_fraction:.3f}")
    out.print(table)


@app.command()
def measure(
    run_id: Annotated[str | None, typer.Argument(help="a run in the store (see `sparank show`)")] = None,
    weights: Annotated[Path | None, typer.Option(help="measure a safetensors file instead of a stored run (needs --arch, --dataset)")] = None,
    arch: Annotated[str | None, typer.Option(help="model spec of --weights, e.g. mlp:300,100")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset of --weights: digits | fashion-mnist | mnist")] = None,
    n: Annotated[int | None, typer.Option("--n", help="evaluation inputs from the test split (default: all)")] = None,
    eval_seed: Annotated[int | None, typer.Option(help="draw the n inputs with this seed instead of taking the first n")] = None,
    norm: Annotated[str, typer.Option(help="linf (sign of the gradient) | l2 (normalised gradient)")] = "linf",
    eps_max: Annotated[float, typer.Option(help="largest ε tried; inputs still correct there are censored")] = 0.5,
    resolution: Annotated[float, typer.Option(help="scan step along the ray")] = 1e-2,
    tol: Annotated[float, typer.Option(help="width of the verified brackets")] = 1e-6,
    batch_size: Annotated[int, typer.Option(help="rows per forward pass")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    data_dir: DataDirOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    threads: ThreadsOpt | None = None,
) -> None:
    """Measure ε* along the FGSM ray (PROTOCOL §2) for a stored run or a safetensors file, and store the brackets.

    Examples: sparank measure r0001 --n 500 ;
    sparank measure --weights model.safetensors --arch mlp:300,100 --dataset fashion-mnist --n 1000
    """
    with _user_errors():
        _set_threads(threads)
        if (run_id is None) == (weights is None):
            raise ValueError("give either a RUN_ID or --weights FILE (with --arch and --dataset)")
        if weights is not None:
            run_id = _import_weights(weights, arch=arch, dataset=dataset, data_dir=data_dir, store_path=store)
        assert run_id is not None
        mid, summary = _measure_run(
            run_id=run_id, store_path=store, data_dir=data_dir, n=n, eval_seed=eval_seed, norm=norm, eps_max=eps_max,
            resolution=resolution, tol=tol, batch_size=batch_size,
        )  # fmt: skip
        if as_json:
            out.print_json(json.dumps({"run": run_id, "measurement": mid, "summary": summary.to_dict()}))
        else:
            _print_summary(f"run {run_id}: ε* along the FGSM ray ({norm}), measurement {mid}", summary)
            out.print(f"stored in {store.resolve()}")


def _import_weights(weights: Path, *, arch: str | None, dataset: str | None, data_dir: Path | None, store_path: Path) -> str:
    """Record a user's safetensors file as an 'import' run (after checking it fits the architecture)."""
    from sparank.data import load_dataset
    from sparank.models import build_model, load_state, parse_spec
    from sparank.store import Store, load_weights_file
    from sparank.structure import model_structure
    from sparank.train import accuracy

    if arch is None or dataset is None:
        raise ValueError("--weights needs --arch (e.g. mlp:300,100) and --dataset (e.g. digits)")
    if not weights.is_file():
        raise ValueError(f"weights file {weights} does not exist")
    spec = parse_spec(arch)
    data = load_dataset(dataset, data_dir=data_dir)
    model = build_model(spec, data.input_shape, data.num_classes)
    state = load_weights_file(weights)
    load_state(model, state, source=str(weights))
    config = {
        "dataset": data.name,
        "arch": str(spec),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "source": str(weights.resolve()),
        "sha256": _sha256(weights),
        "regulariser": {"name": "unknown"},
    }
    metrics = {"test_accuracy": accuracy(model, data.test_x, data.test_y)}
    return Store(store_path).add_run(
        kind="import", config=config, metrics=metrics, structure=model_structure(model).to_dict(), state_dict=model.state_dict()
    )


def _latest_summaries(store: Any) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for m in store.measurements():
        latest[m.run_id] = m.summary
    return latest


@app.command()
def show(
    run_id: Annotated[str | None, typer.Argument(help="show one run in detail")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """List the runs in a store with their latest measurement, or one run in detail.

    Example: sparank show --store sparank-results ; sparank show r0001 --json
    """
    from sparank.store import Store

    with _user_errors():
        st = Store(store, create=False)
        if run_id is not None:
            run = st.get_run(run_id)
            measurements = st.measurements(run_id)
            record = {
                "id": run.id, "kind": run.kind, "created": run.created, "config": run.config, "metrics": run.metrics,
                "history": run.history, "weights": str(run.weights) if run.weights else None,
                "structure": _structure_brief(run.structure),
                "measurements": [{"id": m.id, "created": m.created, "config": m.config, "summary": _brief(m.summary)} for m in measurements],
            }  # fmt: skip
            out.print_json(json.dumps(record, default=str))  # one run is shown as JSON either way
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
        table = Table(title=f"runs in {store}", header_style="bold")
        for col in ("run", "kind", "dataset", "arch", "regulariser", "seed", "test acc", "sparsity", "eff. rank ratio", "AUC ε*", "median ε*"):
            table.add_column(col)
        for r in runs:
            reg = r.config.get("regulariser", {})
            s = latest.get(r.id)
            strength = reg.get("strength")
            table.add_row(
                r.id, r.kind, str(r.config.get("dataset")), str(r.config.get("arch")),
                f"{reg.get('name')}" + (f" {strength:g}" if isinstance(strength, (int, float)) else ""),
                str(r.config.get("train", {}).get("seed", "")),
                _num((r.metrics or {}).get("test_accuracy")),
                _num((r.structure or {}).get("sparsity")),
                _num((r.structure or {}).get("mean_effective_rank_ratio")),
                _num(s.get("auc")) if s else "-",
                _num(s.get("quantiles", {}).get("50")) if s else "-",
            )  # fmt: skip
        out.print(table)
        if not runs:
            out.print("no runs yet: try `sparank train`")


def _num(v: Any) -> str:
    if isinstance(v, (int, float)):
        return f"{v:.4f}"
    return str(v) if v is not None else "-"


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


@app.command()
def regularisers() -> None:
    """List the regularisers with what each does and what its strength means.

    Example: sparank regularisers
    """
    from sparank.regularisers import REGISTRY

    table = Table(title="regularisers (PROTOCOL §5)", header_style="bold")
    for col in ("name", "what it does", "strength", "range", "default"):
        table.add_column(col)
    for name, cls in REGISTRY.items():
        low, high = cls.strength_range
        table.add_row(
            name,
            cls.summary,
            cls.strength_meaning or "takes none",
            f"[{low:g}, {high:g}]" if cls.strength_meaning else "-",
            "-" if cls.default_strength is None else f"{cls.default_strength:g}",
        )
    out.print(table)


@app.command()
def linear(
    dataset: Annotated[str, typer.Option(help="digits | fashion-mnist | mnist")] = "digits",
    out_dir: Annotated[Path, typer.Option("--out", help="where l1_path_<dataset>.{png,svg,csv,md} are written")] = Path("sparank-results/linear"),
    n: Annotated[int | None, typer.Option("--n", help="test inputs measured, the first N (default: all)")] = None,
    lambdas: Annotated[str | None, typer.Option(help="comma-separated λ values (default: 12 log-spaced from 1e-4·λ_max to 0.9·λ_max)")] = None,
    methods: Annotated[str, typer.Option(help="comma-separated subset of l1, prox_l1, sklearn")] = "l1,prox_l1,sklearn",
    norm: Annotated[str, typer.Option(help="linf (FGSM) | l2")] = "linf",
    eps_max: Annotated[float, typer.Option(help="largest ε considered; inputs still correct there are censored")] = 0.5,
    epochs: Annotated[int | None, typer.Option(help="epochs of l1/prox_l1 training (default: 100 on digits, 10 above 10,000 training inputs)")] = None,
    sklearn_max_train: Annotated[int | None, typer.Option(help="fit scikit-learn on the first N training inputs (default: all on digits, 10,000 above)")] = None,
    sklearn_max_iter: Annotated[int | None, typer.Option(help="SAGA epochs per λ at most (default: 1000 on digits, 100 above)")] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated training seeds (data order, initialisation); ratios pool over them")] = "0,1,2",
    data_dir: DataDirOpt = None,
    store: Annotated[Path | None, typer.Option("--store", help="also record every model and measurement in this results store")] = None,
    threads: ThreadsOpt | None = None,
) -> None:
    """The L1 path of multinomial logistic regression with exact FGSM ε* at every λ (PROTOCOL §7).

    Example: sparank linear --dataset digits --out sparank-results/linear
    """
    from dataclasses import replace

    from sparank.data import load_dataset
    from sparank.linear_path import default_sklearn_config, default_train_config, run_l1_path
    from sparank.store import Store

    with _user_errors():
        _set_threads(threads)
        data = load_dataset(dataset, data_dir=data_dir)
        try:
            seed_list = [int(v) for v in seeds.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {seeds!r}") from None
        grid = None
        if lambdas is not None:
            try:
                grid = [float(v) for v in lambdas.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--lambdas must be comma-separated numbers, e.g. 1e-4,1e-3,1e-2; got {lambdas!r}") from None
        train_config = default_train_config(data)
        if epochs is not None:
            train_config = replace(train_config, epochs=epochs)
        sk_config = default_sklearn_config(data)
        if sklearn_max_train is not None:
            sk_config = replace(sk_config, max_train=sklearn_max_train)
        if sklearn_max_iter is not None:
            sk_config = replace(sk_config, max_iter=sklearn_max_iter)
        store_ctx: Any = Store(store) if store is not None else contextlib.nullcontext()
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
        with store_ctx as opened, progress:
            task = progress.add_task(f"L1 path on {data.name}", total=None)

            def on_fit(done: int, total: int, message: str) -> None:
                progress.update(task, completed=done, total=total, description=f"L1 path on {data.name}: {message}")

            result = run_l1_path(
                data, out_dir=out_dir, lambdas=grid, methods=[m.strip() for m in methods.split(",") if m.strip()],
                store=opened, progress=on_fit, n_eval=n, norm=norm, eps_max=eps_max, seeds=seed_list,  # type: ignore[arg-type]
                train_config=train_config, sklearn_config=sk_config,
            )  # fmt: skip
        table = Table(title=f"L1 path on {data.name}: exact FGSM ε* ({norm}) over {result.n_eval} test inputs", header_style="bold")
        for column in ("method", "λ", "accuracy", "sparsity", "‖W‖₁", "ε* AUC", "ε* median", "vs ref", "vs rescaled", "vs L2 (acc.)"):
            table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
        for p in result.points:  # the first seed's point; ratios pool every seed (CIs in the .md table)
            if p.method == "l2" or p.seed != result.seeds[0]:
                continue
            median = "n/a" if p.median is None else ("censored" if p.median == float("inf") else f"{p.median:.4f}")
            ratios = [c.ratio for c in result.comparisons if c.method == p.method and c.lam == p.lam]
            table.add_row(
                p.method, f"{p.lam:.3g}", f"{p.clean_accuracy:.3f}", f"{p.sparsity:.3f}", f"{p.l1_norm:.4g}", f"{p.auc:.4f}", median,
                *("n/a" if r is None else f"{r:.3f}" for r in (ratios + [None] * 3)[:3]),
            )  # fmt: skip
        out.print(table)
        for kind, path in result.files.items():
            out.print(f"{kind}: {path}")
        if store is not None:
            out.print(f"stored {len(result.points)} runs in {store.resolve()}")


@app.command()
def demo(
    store: StoreOpt = Path("sparank-results/demo"),
    threads: ThreadsOpt | None = None,
) -> None:
    """Train a dense MLP on digits, measure ε* on the whole test set, print the summary and where it is stored.

    Example: sparank demo
    """
    with _user_errors():
        _set_threads(threads)
        run_id = _train_run(
            dataset="digits", arch="mlp:300,100", epochs=20, seed=0, lr=1e-3, batch_size=64, optimizer="adam",
            regulariser="none", strength=None, data_dir=None, store_path=store,
        )  # fmt: skip
        mid, summary = _measure_run(
            run_id=run_id, store_path=store, data_dir=None, n=None, eval_seed=None, norm="linf", eps_max=0.5,
            resolution=1e-2, tol=1e-6, batch_size=256,
        )  # fmt: skip
        _print_summary(f"digits, dense MLP 64-300-100-10 (run {run_id}): ε* along the FGSM ray", summary)
        out.print(f"results stored in [bold]{store.resolve()}[/] (run {run_id}, measurement {mid}); `sparank show --store {store}` lists them")


def main() -> None:  # pragma: no cover - entry point for `python -m sparank`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
