"""The speed-up of a study on 2 Dask workers over 1, in one run.

The same small study (digits, ``mlp:300,100``, 30 epochs, six seeds, four
methods and their counterparts and controls: 42 runs, each measured by FGSM,
PGD, FMN and DeepFool on all 450 test inputs: about 1.3 s of work per run) is run by :func:`sparank.study.run_study` into
a fresh store three ways, one after the other:

- ``serial``: ``workers=0``, in this process without Dask (the reference);
- ``1 worker`` and ``2 workers``: a ``LocalCluster`` of that many worker
  processes, one thread (and one torch thread) each.

It prints each wall time (the whole ``run_study`` call: cluster start,
every run, recording) with the mean seconds per run, the speed-up of 2
workers over 1 (target >= 1.7x on 2 cores), and whether the three stores
hold the same runs with bit-identical weights and the same brackets. Run it
on an otherwise idle machine: a busy core slows one side only.

Starting the cluster and its worker processes costs a few seconds, paid once
per study: the runs must add up to a minute or more for the speed-up to be
that of the runs (with 0.5 s runs, 28 of them, it was 1.4x).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_dask.py [--seeds 6] [--epochs 30]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from sparank.store import Store
from sparank.study import StudyConfig, expand, run_study


def study(seeds: int, epochs: int) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "bench-dask",
            "datasets": ["digits"],
            "archs": ["mlp:300,100"],
            "seeds": list(range(seeds)),
            "train": {"epochs": epochs},
            "measure": {"attacks": ["pgd", "fmn", "deepfool"], "attack_n": None},
            "regulariser": [
                {"name": "l1", "strengths": [1e-4]},
                {"name": "prox_l1", "strengths": [0.3]},
                {"name": "magnitude", "strengths": [0.8]},
                {"name": "nuclear", "strengths": [1e-3]},
            ],
            "controls": {"l2": [1e-2]},
        }
    )


def contents(path: Path) -> dict[str, tuple[list[torch.Tensor], list[tuple[str, list[float]]]]]:
    """Per train key: the weights and every measurement's (attack, ε* list)."""
    found = {}
    with Store(path, readonly=True) as store:
        for run in store.runs():
            weights = store.load_weights(run.id)
            measured = sorted((m.config["attack"], store.brackets(m.id).eps_hi.tolist()) for m in store.measurements(run.id))
            found[str(run.key)] = ([weights[k] for k in sorted(weights)], measured)
    return found


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k][0]) == len(b[k][0]) and all(torch.equal(x, y) for x, y in zip(a[k][0], b[k][0], strict=True)) and a[k][1] == b[k][1]
        for k in a
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = study(args.seeds, args.epochs)
    runs = len(expand(config))
    print(f"command: PYTHONPATH=src {sys.executable} benchmarks/bench_dask.py --seeds {args.seeds} --epochs {args.epochs}")
    print(f"study: {runs} runs (digits, mlp:300,100, {args.epochs} epochs, FGSM, PGD, FMN, DeepFool on all 450 test inputs)")
    print(f"load average before: {os.getloadavg()}")
    walls: dict[str, float] = {}
    stores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers in (("serial", 0), ("1 worker", 1), ("2 workers", 2)):
            path = Path(tmp) / label.replace(" ", "-")
            start = time.perf_counter()
            with Store(path) as store:
                outcome = run_study(config, store, workers=workers, threads_per_worker=1, progress=False)
            walls[label] = time.perf_counter() - start
            if not outcome.ok:
                raise SystemExit(f"{label}: {len(outcome.failed)} runs failed: {next(iter(outcome.failed.values()))}")
            stores[label] = contents(path)
            print(f"{label:>10}: {walls[label]:7.1f} s wall, {walls[label] / runs:5.2f} s per run", flush=True)
    print(f"speed-up, 2 workers over 1: {walls['1 worker'] / walls['2 workers']:.2f}x (target >= 1.7x)")
    print(f"Dask with 1 worker over serial: {walls['1 worker'] / walls['serial']:.2f}x the time (cluster start, task overhead)")
    identical = same(stores["serial"], stores["1 worker"]) and same(stores["serial"], stores["2 workers"])
    print(f"the three stores: same runs, bit-identical weights, same eps*: {'yes' if identical else 'NO'}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
