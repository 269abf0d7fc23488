"""Time one training epoch of every registered regulariser against plain training, in one run.

Fashion-MNIST, MLP 784-300-100-10 (``mlp:300,100``), batch 64, Adam, every
method of ``sparank.regularisers.REGISTRY`` at its default strength and
options. For each method it prints the seconds of the training epoch (the
``seconds`` of its ``train``-phase epoch record: the batches, the hooks and
the test-accuracy pass), the ratio to ``none``, the seconds ``finalise``
took after it (a truncation, a fine-tune...), and the test accuracy after
that one epoch. Each method is trained ``--repeat`` times, round-robin over
the methods so that a slow spell of the shared machine hits them all, and
the fastest epoch is kept.

``--max-batches B`` trains on the first ``B·64`` training images only (a
fraction of an epoch; the ratios are what matter) and ``--test-size`` sizes
the test set evaluated after the epoch.

``--epochs E`` trains E epochs per method and reports the mean seconds per
training epoch: a cost paid once per run (``nuclear``'s exact end-game over
its last ``exact_steps`` steps) then counts as it does in a run of E epochs.

``--digits`` instead trains every method of ``DIGITS_RUNS`` on digits (20
epochs, ``--seeds``, default 0) at a mild and a strong strength, *and its
matched dense counterpart* (``sparank.regularisers.counterpart``: plain
training plus the method's fine-tune epochs on the same schedule), and prints
the total budget (epochs), test accuracy against the counterpart's, the
structure (exact zeros / removed units / fc1 numerical and effective rank),
and the FGSM ε* AUC against the counterpart's (eps_max 0.5, resolution 1e-2):
the numbers behind the README table.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_regularisers.py [--threads 2] [--repeat 3] [--max-batches B] [--epochs E]``
or ``PYTHONPATH=src .venv/bin/python benchmarks/bench_regularisers.py --digits [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import time

import torch

from sparank.data import Dataset, load_dataset, load_digits
from sparank.regularisers import REGISTRY, Regulariser, counterpart, get
from sparank.robustness import fgsm_robustness
from sparank.runtime import keep_freed_memory
from sparank.structure import model_structure
from sparank.train import TrainConfig, accuracy, train_model, training_budget

SPEC = "mlp:300,100"
#: --digits: (label, method, options, architecture, (mild, strong) strengths). Sparse methods on the FC-300-100
#: ``mlp``, low-rank and reference methods on ``mlp:64`` (one hidden layer, whose rank is reported).
DIGITS_RUNS: list[tuple[str, str, dict[str, object], str, tuple[float, ...]]] = [
    ("l1", "l1", {}, "mlp", (1e-4, 1e-3)),
    ("prox_l1", "prox_l1", {}, "mlp", (0.1, 0.5)),
    ("magnitude", "magnitude", {}, "mlp", (0.5, 0.9)),
    ("magnitude_gradual", "magnitude_gradual", {}, "mlp", (0.5, 0.9)),
    ("group_lasso", "group_lasso", {}, "mlp", (0.2, 0.5)),
    ("group_lasso outgoing", "group_lasso", {"groups": "outgoing"}, "mlp", (0.2, 0.5)),
    ("l0", "l0", {}, "mlp", (0.1, 10.0)),
    ("l2", "l2", {}, "mlp:64", (1e-3, 3e-2)),
    ("nuclear", "nuclear", {}, "mlp:64", (1e-3, 1e-2)),
    ("nuclear every=1", "nuclear", {"every": 1}, "mlp:64", (1e-3, 1e-2)),
    ("nuclear exact_steps=0", "nuclear", {"exact_steps": 0}, "mlp:64", (1e-2,)),
    ("svt", "svt", {}, "mlp:64", (1.0, 3.0)),
    ("factorised", "factorised", {}, "mlp:64", (0.5, 0.1)),
    ("svd_truncate", "svd_truncate", {}, "mlp:64", (1.0, 0.25, 0.05)),
    ("adversarial", "adversarial", {}, "mlp:64", (0.05, 0.2)),
]


def subset(data: Dataset, max_batches: int | None, batch_size: int, test_size: int) -> Dataset:
    n = len(data.train_x) if max_batches is None else min(len(data.train_x), max_batches * batch_size)
    return Dataset(data.name, data.train_x[:n], data.train_y[:n], data.test_x[:test_size], data.test_y[:test_size], data.classes)


def time_method(name: str, data: Dataset, config: TrainConfig) -> tuple[float, float, float]:
    """(mean seconds per training epoch, seconds after training until the model is final, test accuracy)."""
    regulariser = REGISTRY[name]()
    start = time.perf_counter()
    _, history = train_model(SPEC, data, config, regulariser)
    total = time.perf_counter() - start
    train_seconds = [r.seconds for r in history if r.phase == "train"]
    return sum(train_seconds) / len(train_seconds), total - sum(train_seconds), history[-1].test_accuracy or 0.0


def digits_table(seeds: list[int]) -> None:
    """Each method at a mild and a strong strength on digits, beside its matched dense counterpart."""
    data = load_digits()

    def run(spec: str, reg: Regulariser, seed: int) -> tuple[torch.nn.Module, int, float, float]:
        model, history = train_model(spec, data, TrainConfig(epochs=20, seed=seed), reg)
        auc = fgsm_robustness(model, data.test_x, data.test_y, eps_max=0.5, resolution=1e-2).summary().auc
        return model, training_budget(history).epochs, accuracy(model, data.test_x, data.test_y), auc

    dense_cache: dict[tuple[str, int, int], tuple[torch.nn.Module, int, float, float]] = {}

    def dense(spec: str, reg: Regulariser, seed: int) -> tuple[torch.nn.Module, int, float, float]:
        """The trained counterpart of ``reg``: plain training with ``reg``'s budget (cached by its fine-tune epochs)."""
        key = (spec, reg.extra_epochs, seed)
        if key not in dense_cache:
            dense_cache[key] = run(spec, counterpart(reg), seed)
        return dense_cache[key]

    print("| method | arch | strength | seed | epochs | test acc (counterpart) | structure | FGSM AUC (counterpart) |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in ("mlp", "mlp:64"):
        for seed in seeds:
            plain, epochs, acc, auc = dense(spec, get("none"), seed)
            fc1 = model_structure(plain).layers["fc1"]
            print(f"| none | {spec} | — | {seed} | {epochs} | {acc:.3f} | fc1 rank {fc1.numerical_rank}, eff. {fc1.effective_rank:.1f} | {auc:.4f} |", flush=True)
    for label, name, options, spec, strengths in DIGITS_RUNS:
        for strength in strengths:
            for seed in seeds:
                reg = get(name, strength, **options)
                try:
                    model, epochs, acc, auc = run(spec, reg, seed)
                except Exception as error:  # noqa: BLE001 - a failed row is reported, not fatal to the table
                    print(f"| {label} | {spec} | {strength:g} | {seed} | failed: {error} |", flush=True)
                    continue
                _, dense_epochs, dense_acc, dense_auc = dense(spec, reg, seed)
                assert dense_epochs == epochs, (label, epochs, dense_epochs)  # the counterpart's budget matches
                structure = model_structure(model)
                fc1 = structure.layers["fc1"]
                if name == "group_lasso":
                    units = reg.config(model)["units_removed"]
                    hidden = sum(m.out_features for n, m in model.named_children() if n.startswith("fc"))
                    shown = f"{units['input']} of 64 pixels unused, {sum(v for k, v in units.items() if k != 'input')} of {hidden} hidden units removed"
                elif spec == "mlp":
                    shown = f"{structure.sparsity:.0%} exact zeros, {structure.effective_sparsity:.0%} effectively zero"
                else:
                    shown = f"fc1 rank {fc1.numerical_rank}, eff. {fc1.effective_rank:.1f}"
                print(
                    f"| {label} | {spec} | {strength:g} | {seed} | {epochs} | {acc:.3f} ({dense_acc:.3f}) | {shown} | {auc:.4f} ({dense_auc:.4f}) |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--repeat", type=int, default=3, help="trainings per method; the fastest epoch is kept")
    parser.add_argument("--max-batches", type=int, default=None, help="train on the first B batches only (default: the whole epoch)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images evaluated after the epoch")
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the registry (default: all, with none first)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per training; the table shows seconds per epoch")
    parser.add_argument("--digits", action="store_true", help="print the digits accuracy/structure/AUC table instead of timing")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="--digits: seeds to train (default 0)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the sparank command does (sparank.runtime): every tool timed here runs with it
    if args.digits:
        digits_table(args.seeds)
        return
    config = TrainConfig(epochs=args.epochs, batch_size=64, optimizer="adam", seed=0)
    data = subset(load_dataset("fashion-mnist"), args.max_batches, config.batch_size, args.test_size)
    names = ["none", *[n for n in (args.methods or REGISTRY) if n != "none"]]
    steps = -(-len(data.train_x) // config.batch_size)
    print(f"{SPEC} on Fashion-MNIST: {len(data.train_x)} training images ({steps} steps of {config.batch_size}), "
          f"{args.epochs} epoch(s), {args.threads} threads, best of {args.repeat}", flush=True)

    time_method("none", data, config)  # warm-up: first-call costs (allocations, kernels) fall on no method
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(args.repeat):
        for name in names:
            try:
                result = time_method(name, data, config)
            except Exception as error:  # noqa: BLE001 - a broken method is reported, not fatal to the table
                print(f"{name}: failed: {error}", flush=True)
                continue
            print(f"  {name}: {result[0]:.2f} s/epoch, {result[1]:.2f} s after", flush=True)
            if name not in best or result[0] < best[name][0]:
                best[name] = result

    base = best["none"][0]
    width = max(len(n) for n in best)
    print(f"\n| {'method':<{width}} | {'strength':>8} | {'s/epoch':>7} | {'× none':>6} | {'finalise s':>10} | {'test acc':>8} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 12}|{'-' * 10}|")
    for name, (seconds, finalise, acc) in best.items():
        strength = REGISTRY[name].default_strength
        shown = "—" if strength is None else f"{strength:g}"
        print(f"| {name:<{width}} | {shown:>8} | {seconds:7.2f} | {seconds / base:6.2f} | {finalise:10.2f} | {acc:8.4f} |")


if __name__ == "__main__":
    main()
