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

``--digits`` instead trains ``mlp:64`` on digits (20 epochs, seed 0) at a
mild and a strong strength of every method in ``DIGITS_STRENGTHS`` and prints
test accuracy, the hidden layer's numerical and effective rank, and the FGSM
ε* AUC (eps_max 0.5, resolution 1e-2): the numbers behind the README table.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_regularisers.py [--threads 2] [--repeat 3] [--max-batches B]``
or ``PYTHONPATH=src .venv/bin/python benchmarks/bench_regularisers.py --digits``
"""

from __future__ import annotations

import argparse
import time

import torch

from sparank.data import Dataset, load_dataset, load_digits
from sparank.regularisers import REGISTRY, get
from sparank.robustness import fgsm_robustness
from sparank.structure import model_structure
from sparank.train import TrainConfig, accuracy, train_model

SPEC = "mlp:300,100"
#: (mild, strong) strength per method for --digits
DIGITS_STRENGTHS: dict[str, tuple[float, float]] = {
    "l2": (1e-3, 3e-2),
    "nuclear": (1e-3, 1e-2),
    "svt": (1.0, 3.0),
    "factorised": (0.5, 0.1),
    "svd_truncate": (0.25, 0.05),
    "adversarial": (0.05, 0.2),
}


def subset(data: Dataset, max_batches: int | None, batch_size: int, test_size: int) -> Dataset:
    n = len(data.train_x) if max_batches is None else min(len(data.train_x), max_batches * batch_size)
    return Dataset(data.name, data.train_x[:n], data.train_y[:n], data.test_x[:test_size], data.test_y[:test_size], data.classes)


def time_method(name: str, data: Dataset, config: TrainConfig) -> tuple[float, float, float]:
    """(seconds of the training epoch, seconds after it until the model is final, test accuracy)."""
    regulariser = REGISTRY[name]()
    start = time.perf_counter()
    _, history = train_model(SPEC, data, config, regulariser)
    total = time.perf_counter() - start
    epoch = next(r for r in history if r.phase == "train")
    return epoch.seconds, total - sum(r.seconds for r in history if r.phase == "train"), history[-1].test_accuracy or 0.0


def digits_table() -> None:
    """Accuracy, rank of fc1 and FGSM AUC on digits at a mild and a strong strength of each method."""
    data = load_digits()
    config = TrainConfig(epochs=20, seed=0)
    print(f"| method | strength | test acc | fc1 numerical rank /64 | fc1 effective rank | FGSM AUC |")
    print("|---|---|---|---|---|---|")
    runs = [("none", None), *[(n, v) for n, pair in DIGITS_STRENGTHS.items() for v in pair]]
    for name, strength in runs:
        model, _ = train_model("mlp:64", data, config, get(name, strength))
        fc1 = model_structure(model).layers["fc1"]
        auc = fgsm_robustness(model, data.test_x, data.test_y, eps_max=0.5, resolution=1e-2).summary().auc
        acc = accuracy(model, data.test_x, data.test_y)
        shown = "—" if strength is None else f"{strength:g}"
        print(f"| {name} | {shown} | {acc:.3f} | {fc1.numerical_rank} | {fc1.effective_rank:.1f} | {auc:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--repeat", type=int, default=3, help="trainings per method; the fastest epoch is kept")
    parser.add_argument("--max-batches", type=int, default=None, help="train on the first B batches only (default: the whole epoch)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images evaluated after the epoch")
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the registry (default: all, with none first)")
    parser.add_argument("--digits", action="store_true", help="print the digits accuracy/rank/AUC table instead of timing")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.digits:
        digits_table()
        return
    config = TrainConfig(epochs=1, batch_size=64, optimizer="adam", seed=0)
    data = subset(load_dataset("fashion-mnist"), args.max_batches, config.batch_size, args.test_size)
    names = ["none", *[n for n in (args.methods or REGISTRY) if n != "none"]]
    steps = -(-len(data.train_x) // config.batch_size)
    print(f"{SPEC} on Fashion-MNIST: {len(data.train_x)} training images ({steps} steps of {config.batch_size}), "
          f"{args.threads} threads, best of {args.repeat}", flush=True)

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
