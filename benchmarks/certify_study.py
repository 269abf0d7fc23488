"""Certify the FGSM ε* of every run of a study store, and count the crossings its scan stepped over.

For each run of the store (read-only: nothing is written to it), its stored FGSM
measurement is measured again with ``certify=True`` at the same settings and on
the same inputs; an input whose certified ε* lies below the stored (scanned) ε*
by more than tol had a first crossing the scan at that resolution stepped over.
Prints per run the certified fraction, the stepped-over count and the largest
change of ε*, and the totals; writes benchmarks/results/certify_<store name>.json.
With ``--write-copy DIR`` the store is copied to DIR and each FGSM measurement's
brackets there are replaced by the certified ones (where proved), marked per input
as certified or not and the measurement's settings with ``certify`` on, so that
``sparank report DIR`` gives the study's verdicts with certified ε* and says so.

Run: ``.venv/bin/python benchmarks/certify_study.py sparank-results/fashion-mlp [--threads 2] [--write-copy /tmp/x]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path

import torch

from sparank.data import load_dataset
from sparank.models import build_model, load_state
from sparank.robustness import CLEAN_WRONG, FOOLED, fgsm_robustness
from sparank.runtime import keep_freed_memory
from sparank.store import Store

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write-copy", type=Path, default=None, help="copy the store here with certified FGSM brackets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the sparank command does (sparank.runtime): every tool timed here runs with it
    rows = []
    updates: list[tuple[float, float, int, int, int]] = []  # eps_lo, eps_hi, status, measurement id, position
    flags: list[tuple[int, int, int]] = []  # certified, measurement id, position: every input of the measurements redone
    configs: list[tuple[str, int]] = []  # the measurement's config with certify on, measurement id
    with Store(args.store, readonly=True) as store:
        data = None
        for run in store.runs():
            if run.weights is None:
                continue
            fgsm = [m for m in store.measurements(run.id) if m.config.get("attack", "fgsm") == "fgsm"]
            if not fgsm:
                continue
            m = fgsm[-1]
            c = m.config
            if data is None:
                data = load_dataset(run.config["dataset"])
            table = store.brackets(m.id)
            x, y = data.test_x[table.input_index], data.test_y[table.input_index]
            model = build_model(run.config["arch"], data.input_shape, data.num_classes)
            load_state(model, store.load_weights(run.id), source=f"run {run.id}")
            model.eval()
            start = time.perf_counter()
            r = fgsm_robustness(
                model, x, y, eps_max=float(c["eps_max"]), norm=c["norm"], resolution=float(c["resolution"]), tol=float(c["tol"]),
                certify=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            assert r.certified is not None
            proved = r.certified & (r.status != int(CLEAN_WRONG))
            stepped = proved & (r.status == int(FOOLED)) & (r.eps_hi < table.eps_hi - 2 * float(c["tol"]))
            change = (table.eps_hi - r.eps_hi)[stepped]
            row = {
                "run": run.id, "regulariser": run.config.get("regulariser"), "seed": run.config.get("seed"), "n": len(r),
                "certified_fraction": float(r.certified.double().mean()), "stepped_over": int(stepped.sum()),
                "largest_change": float(change.max()) if len(change) else 0.0,
                "same_statuses": bool((r.status == table.status).all()), "seconds": seconds,
                "bound_passes_per_input": r.bound_passes / max(len(r), 1),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            for i in torch.nonzero(proved).squeeze(1).tolist():
                updates.append((float(r.eps_lo[i]), float(r.eps_hi[i]), int(r.status[i]), m.id, i))
            flags.extend((int(r.certified[i]), m.id, i) for i in range(len(r)))
            settings = dict(c.get("attack_settings") or {"attack": "fgsm", "resolution": c["resolution"], "tol": c["tol"]})
            configs.append((json.dumps({**c, "attack_settings": {**settings, "certify": True}}), m.id))
    total = {
        "runs": len(rows), "inputs": sum(r["n"] for r in rows),
        "certified_fraction": sum(r["certified_fraction"] * r["n"] for r in rows) / max(sum(r["n"] for r in rows), 1),
        "stepped_over": sum(r["stepped_over"] for r in rows), "runs_with_stepped_over": sum(r["stepped_over"] > 0 for r in rows),
        "largest_change": max((r["largest_change"] for r in rows), default=0.0),
        "runs_with_other_statuses": sum(not r["same_statuses"] for r in rows), "seconds": sum(r["seconds"] for r in rows),
    }  # fmt: skip
    print("total", json.dumps(total))
    if args.write_copy is not None:
        shutil.copytree(args.store, args.write_copy)
        Store(args.write_copy).close()  # brings the copy to this sparank's schema (the per-input certified column)
        # the copy says what it holds: certify on in each redone measurement's settings, and per input whether it was proved
        with sqlite3.connect(args.write_copy / "sparank.sqlite") as con:
            con.executemany("UPDATE brackets SET eps_lo = ?, eps_hi = ?, status = ? WHERE measurement_id = ? AND position = ?", updates)
            con.executemany("UPDATE brackets SET certified = ? WHERE measurement_id = ? AND position = ?", flags)
            con.executemany("UPDATE measurements SET config = ? WHERE id = ?", configs)
        con.close()
        print(f"certified brackets written into the copy {args.write_copy} ({len(updates)} inputs)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"certify_{args.store.name}.json").write_text(json.dumps({"total": total, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
