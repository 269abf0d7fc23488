"""Time sparank's ε* measure against ART and Foolbox on Fashion-MNIST, in one run.

For an MLP 784-300-100-10 and the small CNN (trained here on first use, then
loaded from benchmarks/results/), on the first N test inputs:

- sparank ``fgsm_robustness`` at resolution 1e-3 (ART's own step) and 1e-2, tol 1e-6;
- sparank certified (``certify=True``: every ε below ε* proved correct, sparank.certify), with the
  scan at 1e-2 placing its segments, on the model and with the scan on the fast copy;
- sparank's scan on the opt-in fast copy (``fast=True``: frozen TorchScript, brackets checked on the model);
- ART ``FastGradientMethod(norm=inf, eps=0.5, eps_step=1e-3, minimal=True)``;
- Foolbox ``FGSM`` over 501 ε values in [0, 0.5];
- one fixed-ε FGSM attack (direction + one forward pass) as the floor.

Every sparank mode and ART are timed round-robin (best of ``--repeat``; ART imported before any
timing; Foolbox, 50× slower, once), each sparank mode beside its cost in
forward-pass equivalents per input (its time over the time of one batched forward pass
of the same inputs), the bound passes per input and the cost of one bound pass (in
forward passes of the same inputs). The finding: how many inputs have a first crossing
that the scan at 1e-2 and at 1e-3 steps over (certified ε* below the scan's by more than
tol), and by how much. It prints wall times, ratios and the agreement checks: the fooled sets are
identical and ART's grid value minus sparank's ε* lies in [0, step] for every
input whose direction the peers compute the same way (their autograd
cross-entropy gradient saturates at large margins; the count of inputs where
it differs from sparank's is printed). Needs the optional extra: ``pip install -e '.[bench]'``.

Run: ``.venv/bin/python benchmarks/bench_fgsm.py [--n 1000] [--threads 2] [--no-foolbox]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparank.attacks import fgsm_direction
from sparank.attacks.fgsm import ray_points
from sparank.certify import bound_network, make_ray, margin_bounds_on, pivot_values
from sparank.data import load_dataset
from sparank.models import build_model
from sparank.robustness import CENSORED, CLEAN_WRONG, FOOLED, fgsm_robustness
from sparank.runtime import keep_freed_memory
from sparank.store import load_weights_file, save_weights
from sparank.train import TrainConfig, train_model

RESULTS = Path(__file__).parent / "results"
EPS_MAX = 0.5
STEP = 1e-3
ARCHS = {"mlp": ("mlp:300,100", 3), "cnn": ("cnn:16,32,128", 2)}  # spec, training epochs


def get_model(name: str, data):
    spec, epochs = ARCHS[name]
    path = RESULTS / f"fashion-{name}.safetensors"
    model = build_model(spec, data.input_shape, data.num_classes)
    if path.exists():
        model.load_state_dict(load_weights_file(path))
    else:
        print(f"training {spec} on Fashion-MNIST for {epochs} epochs (cached in {path})...", flush=True)
        model, _ = train_model(spec, data, TrainConfig(epochs=epochs, batch_size=128, seed=0))
        RESULTS.mkdir(parents=True, exist_ok=True)
        save_weights(path, model.state_dict())
    return model.eval()


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def fixed_eps_fgsm(model, x, y, eps: float, batch_size: int = 256) -> torch.Tensor:
    """One FGSM attack at a fixed ε: the direction, then one forward pass (the floor for any ε* search)."""
    d = fgsm_direction(model, x, y, batch_size=batch_size)
    with torch.no_grad():
        adv = (x + eps * d).clamp(0, 1)
        return torch.cat([model(adv[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) != y


def saturating_direction_agrees(model, x, y, directions: torch.Tensor) -> np.ndarray:
    """Per input: does sign(autograd ∇ CE), the peers' direction, equal sparank's direction?"""
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    return (grad.sign() == directions).flatten(1).all(1).numpy()


def art_minimal(model, x, y, num_classes: int) -> np.ndarray:
    """ART's minimal FGSM; returns the grid ε per input (inf where not fooled, 0 where clean-wrong)."""
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=num_classes, clip_values=(0.0, 1.0)
    )
    attack = FastGradientMethod(clf, norm=np.inf, eps=EPS_MAX, eps_step=STEP, minimal=True)
    xn, yn = x.numpy(), y.numpy()
    adv = attack.generate(xn, yn)
    fooled = clf.predict(adv).argmax(1) != yn
    clean_wrong = clf.predict(xn).argmax(1) != yn
    moved = np.abs(adv - xn).reshape(len(xn), -1).max(1)
    eps = np.where(fooled, np.round(moved / STEP) * STEP, np.inf)
    eps[clean_wrong] = 0.0
    return eps


def foolbox_sweep(model, x, y) -> np.ndarray:
    """Foolbox FGSM over 501 ε; returns the first successful ε per input (inf if none)."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    epsilons = np.linspace(0.0, EPS_MAX, 501)
    _, _, success = fb.attacks.FGSM()(fmodel, x, y, epsilons=epsilons.tolist())
    success = success.numpy()
    first = np.where(success.any(0), epsilons[success.argmax(0)], np.inf)
    return first


def forward_seconds(model, x, batch_size: int = 256) -> float:
    """One forward pass of every input, batched as the measure batches them (best of 5)."""
    with torch.inference_mode():
        return timed(lambda: [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)], repeat=5)[0]


def bound_pass_seconds(model, x, y, batch_size: int = 256) -> float:
    """One bound pass of every input over the segment [0.05, 0.06], as the certified search makes it: rays and
    pivots (at the segment's end) prepared once beforehand, then sparank.certify.margin_bounds_on (best of 3)."""
    net = bound_network(model)
    d = fgsm_direction(model, x, y)
    a = torch.full((len(x),), 0.05, dtype=torch.float64)
    b = a + 0.01
    parts = []
    for i in range(0, len(x), batch_size):
        s = slice(i, i + batch_size)
        ray = make_ray(x[s], d[s], (0.0, 1.0))
        parts.append((s, ray, pivot_values(net, ray_points(ray.x, ray.d, b[s], (0.0, 1.0)))))

    def run() -> None:
        for s, ray, pivot in parts:
            margin_bounds_on(net, ray, y[s], a[s], b[s], pivot)

    return timed(run, repeat=3)[0]


#: the sparank modes timed round-robin: label -> fgsm_robustness keyword arguments
MODES = {
    "scan_1e3": dict(resolution=1e-3),
    "scan_1e2": dict(resolution=1e-2),
    "fast_1e3": dict(resolution=1e-3, fast=True),
    "fast_1e2": dict(resolution=1e-2, fast=True),
    "certified": dict(resolution=1e-2, certify=True),
    "certified_fast": dict(resolution=1e-2, certify=True, fast=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="test inputs (the first N)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--repeat", type=int, default=3, help="round-robin repeats of the sparank modes (best kept)")
    parser.add_argument("--skip-slow", action="store_true", help="skip ART and Foolbox (sparank timings only)")
    parser.add_argument("--no-foolbox", action="store_true", help="skip Foolbox (ART still runs)")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"sparank modes to time, comma-separated (default all: {','.join(MODES)}); the agreement checks need scan_1e3, scan_1e2 and certified",
    )
    args = parser.parse_args()
    modes = {label: MODES[label] for label in args.modes.split(",")}
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the sparank command does (sparank.runtime): every tool timed here runs with it
    if not args.skip_slow:  # imported before any timing: importing ART takes about 0.9 s here, not part of its attack
        import art.attacks.evasion  # noqa: F401
        import art.estimators.classification  # noqa: F401

        if not args.no_foolbox:
            import foolbox  # noqa: F401
    data = load_dataset("fashion-mnist")
    x, y = data.test_x[: args.n], data.test_y[: args.n]
    report = {}
    for name in args.models.split(","):
        model = get_model(name, data)
        row: dict[str, float | int | bool | str] = {"load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()), "malloc_keeps_freed_memory": kept}
        t_fixed, _ = timed(lambda: fixed_eps_fgsm(model, x, y, 0.1), repeat=3)
        t_forward = forward_seconds(model, x)
        t_bound = bound_pass_seconds(model, x, y)
        times = {label: float("inf") for label in modes}
        results = {}
        t_art, art_eps = float("inf"), None
        quick = set(modes) != set(MODES)
        for _ in range(args.repeat):  # round-robin, ART included: each sees the same machine load, best of the repeats kept
            for label, kw in modes.items():
                t, results[label] = timed(lambda kw=kw: fgsm_robustness(model, x, y, eps_max=EPS_MAX, tol=1e-6, **kw))
                times[label] = min(times[label], t)
            if not args.skip_slow and not quick:
                t, art_eps = timed(lambda: art_minimal(model, x, y, data.num_classes))
                t_art = min(t_art, t)
        if quick:  # a quick look at some modes: times only, no agreement checks, nothing written
            print(f"\n[{name}] load {row['load_before']} -> " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
            for label in modes:
                passes = results[label].bound_passes
                extra = f", {passes / len(x):.2f} bound passes per input" if passes else ""
                print(f"  {label:16s} {times[label]:.3f} s  {times[label] / t_forward:6.1f} forward passes per input{extra}")
            print(f"  one bound pass = {t_bound / t_forward:.1f} forward passes", flush=True)
            continue
        fine, coarse, cert = results["scan_1e3"], results["scan_1e2"], results["certified"]
        t_fine, t_coarse = times["scan_1e3"], times["scan_1e2"]
        row.update(fixed_fgsm_s=t_fixed, forward_pass_s=t_forward, sparank_1e3_s=t_fine, sparank_1e2_s=t_coarse)
        for label in MODES:
            row[f"{label}_s"] = times[label]
            row[f"{label}_forward_equivalents_per_input"] = times[label] / t_forward
        row["bound_pass_in_forward_passes"] = t_bound / t_forward
        row["certified_bound_passes_per_input"] = cert.bound_passes / len(x)
        row["certified_fraction"] = float(cert.certified.double().mean())  # type: ignore[union-attr]
        row["certified_fast_fraction"] = float(results["certified_fast"].certified.double().mean())  # type: ignore[union-attr]
        row["sparank_1e2_over_fixed"] = t_coarse / t_fixed
        same = (torch.abs(coarse.eps_hi - fine.eps_hi) <= 1e-6) | (coarse.eps_hi == fine.eps_hi)  # inf == inf: both censored
        row["coarse_vs_fine_same_eps"] = float(same.double().mean())
        for label in ("fast_1e3", "fast_1e2", "certified_fast"):
            other = results[label]
            same = (other.status == results["certified" if label == "certified_fast" else label.replace("fast", "scan")].status).all()
            row[f"{label}_same_statuses"] = bool(same)
        # the finding: crossings a scan steps over (certified ε* below the scan's by more than tol)
        for label, scan in (("1e2", coarse), ("1e3", fine)):
            ok = cert.certified & (cert.status != int(CLEAN_WRONG))  # type: ignore[operator]
            stepped = ok & (cert.eps_hi < scan.eps_hi - 2e-6)
            change = (scan.eps_hi - cert.eps_hi)[stepped]
            row[f"stepped_over_at_{label}"] = int(stepped.sum())
            row[f"stepped_over_at_{label}_eps_change"] = (
                ""
                if not len(change)
                else (f"{float(change.min()):.2e}..{float(change.max()):.2e}" if torch.isfinite(change).all() else "to censored")
            )
        s = fine.summary()
        row.update(clean_accuracy=s.clean_accuracy, censored=s.censored_fraction, median_eps=s.median)
        print(f"\n[{name}] " + " | ".join(f"{label} {times[label]:.3f}s" for label in MODES), flush=True)
        if not args.skip_slow:
            row.update(art_s=t_art)
            row["art_forward_equivalents_per_input"] = t_art / t_forward
            row["art_over_sparank_1e3"] = t_art / t_fine
            row["art_over_sparank_1e2"] = t_art / t_coarse
            for label in MODES:
                row[f"art_over_{label}"] = t_art / times[label]
            peers = [("art", art_eps)]
            if not args.no_foolbox:
                t_fb, fb_eps = timed(lambda: foolbox_sweep(model, x, y))
                row.update(foolbox_s=t_fb)
                row["foolbox_over_sparank_1e3"] = t_fb / t_fine
                peers.append(("foolbox", fb_eps))
            ours = fine.eps_hi.numpy()
            st = fine.status.numpy()
            # ART and Foolbox take the direction from autograd through cross-entropy, which saturates at large
            # margins (sparank's does not): compare grids only where the two directions are the same
            same_dir = saturating_direction_agrees(model, x, y, fine.directions)
            row["directions_differ_from_autograd_ce"] = int((~same_dir).sum())
            for label, other in peers:
                fooled_other = np.isfinite(other) & (other > 0)
                row[f"{label}_same_fooled_set"] = bool(np.array_equal(fooled_other, st == int(FOOLED)))
                row[f"{label}_fooled_set_differences"] = int((fooled_other != (st == int(FOOLED))).sum())
                both = fooled_other & (st == int(FOOLED)) & same_dir
                diff = other[both] - ours[both]
                row[f"{label}_grid_minus_eps_in_0_step"] = float(((diff >= -1e-6) & (diff <= STEP + 1e-6)).mean())
                row[f"{label}_grid_minus_eps_range"] = f"[{diff.min():.2e}, {diff.max():.2e}]"
                row[f"{label}_clean_wrong_agree"] = bool(np.array_equal(other == 0, st == int(CLEAN_WRONG)))
            row["censored_sparank"] = int((st == int(CENSORED)).sum())
        row["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        report[name] = row
        for k, v in row.items():
            print(f"  {k:44s} {v:.4g}" if isinstance(v, float) else f"  {k:44s} {v}", flush=True)
    if not report:  # --modes: a quick look, not a result
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_fgsm.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten {RESULTS / 'bench_fgsm.json'}")


if __name__ == "__main__":
    main()
