"""Before and after the saturation-free FGSM direction, on a digits MLP trained long enough to be confident.

Trains ``mlp`` (300, 100) on digits for 100 epochs (Adam, seed 0), then measures ε* on the 450 test
inputs twice along the same rays except for the direction: once along the old direction (autograd
through cross-entropy, which loses the true-class term once p_y rounds to 1) and once along
:func:`sparank.attacks.fgsm_direction`. Prints how many directions differ and both summaries.

    PYTHONPATH=src .venv/bin/python benchmarks/direction_saturation.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparank.attacks import fgsm_direction, first_crossing
from sparank.data import load_digits
from sparank.robustness import RobustnessResult
from sparank.train import TrainConfig, train_model


def main() -> None:
    torch.set_num_threads(2)
    data = load_digits()
    model, _ = train_model("mlp", data, TrainConfig(epochs=100, seed=0))
    model.eval()
    x, y = data.test_x, data.test_y
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    old, new = grad.sign(), fgsm_direction(model, x, y)
    with torch.no_grad():
        logits = model(x)
    top = logits.topk(2, dim=1).values
    correct = logits.argmax(1) == y
    print(f"correct inputs: {int(correct.sum())} of {len(x)}; with margin > 16.6: {float((top[correct, 0] - top[correct, 1] > 16.6).float().mean()):.1%}")
    print(f"directions that differ: {int((old != new).flatten(1).any(1).sum())} of {len(x)}")
    for name, d in (("saturating (autograd through CE)", old), ("sparank fgsm_direction", new)):
        c = first_crossing(model, x, y, d, eps_max=0.5, resolution=1e-2, tol=1e-6)
        s = RobustnessResult(c.eps_lo, c.eps_hi, c.status, y, d, "linf", 0.5, 1e-2, 1e-6).summary()
        print(f"{name:34s} AUC {s.auc:.4f}  median ε* {s.median:.4f}  censored {s.censored_fraction:.4f}  no_direction {s.no_direction_fraction:.4f}")


if __name__ == "__main__":
    main()
