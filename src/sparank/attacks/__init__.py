"""Attacks: the FGSM ray search and the cross-checks (PROTOCOL §2–3), in one calling convention."""

from sparank.attacks.base import (
    ALONE_SAMPLE,
    NOISE_ULPS,
    NORMS,
    Bounds,
    Found,
    MinimalAttack,
    Norm,
    Progress,
    Status,
    as_tensor,
    check_inputs,
    check_model_dtype,
    check_norm,
    check_tol,
    distances,
    input_gradient,
    logits_of,
    loss_gradient_weights,
    min_tol,
    model_device,
    normalise,
    project,
    verify_points,
)
from sparank.attacks.deepfool import DeepFool, rho_adv
from sparank.attacks.fgsm import FGSM, Crossing, fgsm_direction, first_crossing, ray_points, ray_search
from sparank.attacks.fmn import FMN
from sparank.attacks.pgd import PGD, pgd, pgd_minimal
from sparank.attacks.transfer import RandomRay, Transfer

#: every attack by the name the store and the CLI use
ATTACKS: dict[str, type[MinimalAttack]] = {cls.name: cls for cls in (FGSM, PGD, FMN, DeepFool, Transfer, RandomRay)}

__all__ = [
    "ALONE_SAMPLE",
    "ATTACKS",
    "DeepFool",
    "FGSM",
    "FMN",
    "Found",
    "MinimalAttack",
    "PGD",
    "RandomRay",
    "Transfer",
    "distances",
    "input_gradient",
    "normalise",
    "pgd",
    "pgd_minimal",
    "project",
    "ray_search",
    "rho_adv",
    "NOISE_ULPS",
    "NORMS",
    "Bounds",
    "Crossing",
    "Norm",
    "Progress",
    "Status",
    "as_tensor",
    "check_inputs",
    "check_model_dtype",
    "check_norm",
    "check_tol",
    "fgsm_direction",
    "first_crossing",
    "logits_of",
    "loss_gradient_weights",
    "min_tol",
    "model_device",
    "ray_points",
    "verify_points",
]
