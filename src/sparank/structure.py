"""How sparse and how low-rank a model is: the structure metrics of PROTOCOL §4.

Every weight layer (``Linear`` and ``Conv*``, see
:func:`sparank.models.weight_layers`) is viewed as a matrix: a Linear weight
as ``(out, in)``, a conv kernel ``(out, in, kh, kw)`` as ``(out, in·kh·kw)``.
Biases are not counted. Per layer:

- sparsity: the fraction of weights exactly 0; effective sparsity: the
  fraction with ``|w| <= tau·max|w|``, for methods that shrink without zeroing;
- the singular values σ (float64 SVD), from which
  **effective rank** ``exp(H(p))`` with ``p_i = σ_i / Σσ`` (Roy & Vetterli
  2007, https://infoscience.epfl.ch/record/110188),
  **stable rank** ``||W||_F² / ||W||_2²`` and numerical rank
  ``#{σ_i > tau·σ_1}``;
- norms: nuclear ``Σσ``, L1 ``Σ|w|``, Frobenius and spectral ``σ_1``.

For the whole model: weight counts, overall (effective) sparsity weighted by
the number of weights, the product of spectral norms and the mean effective
rank ratio. :func:`layer_structure` works on one tensor, :func:`model_structure`
on any ``nn.Module``; both return frozen dataclasses with ``to_dict()`` for
JSON.

Example::

    >>> s = model_structure(model)
    >>> s.sparsity, s.layers["fc1"].effective_rank
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sparank.models import weight_layers

#: default relative threshold for effective sparsity and numerical rank
TAU = 1e-3


@dataclass(frozen=True)
class LayerStructure:
    """Structure of one weight matrix (a conv kernel viewed as ``(out, in·kh·kw)``)."""

    shape: tuple[int, ...]  # the weight's own shape, e.g. (out, in, kh, kw)
    rows: int  # out
    cols: int  # in (·kh·kw)
    tau: float  # the threshold used for effective sparsity and numerical rank
    n_weights: int  # rows * cols
    n_zero: int  # weights exactly 0
    n_effective_zero: int  # weights with |w| <= tau * max|w|
    sparsity: float  # n_zero / n_weights
    effective_sparsity: float  # n_effective_zero / n_weights
    singular_values: tuple[float, ...]  # σ_1 >= ... >= σ_min(rows, cols) >= 0
    full_rank: int  # min(rows, cols)
    effective_rank: float  # exp(H(σ/Σσ)) in [1, full_rank]; 0 for an all-zero matrix
    stable_rank: float  # ||W||_F² / σ_1² in [1, rank(W)]; 0 for an all-zero matrix
    numerical_rank: int  # #{σ_i > tau·σ_1}
    nuclear_norm: float  # Σσ
    l1_norm: float  # Σ|w|
    frobenius_norm: float  # sqrt(Σw²) = sqrt(Σσ²)
    spectral_norm: float  # σ_1

    @property
    def effective_rank_ratio(self) -> float:
        """Effective rank / full rank, in [0, 1]."""
        return self.effective_rank / self.full_rank

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for the shape and the singular values)."""
        return {
            "shape": list(self.shape),
            "rows": self.rows,
            "cols": self.cols,
            "tau": self.tau,
            "n_weights": self.n_weights,
            "n_zero": self.n_zero,
            "n_effective_zero": self.n_effective_zero,
            "sparsity": self.sparsity,
            "effective_sparsity": self.effective_sparsity,
            "singular_values": list(self.singular_values),
            "full_rank": self.full_rank,
            "effective_rank": self.effective_rank,
            "effective_rank_ratio": self.effective_rank_ratio,
            "stable_rank": self.stable_rank,
            "numerical_rank": self.numerical_rank,
            "nuclear_norm": self.nuclear_norm,
            "l1_norm": self.l1_norm,
            "frobenius_norm": self.frobenius_norm,
            "spectral_norm": self.spectral_norm,
        }


@dataclass(frozen=True)
class ModelStructure:
    """Structure of every weight layer of a model, and the totals over layers.

    ``spectral_norm_product`` is the product of the per-layer spectral norms
    of the matrix views. For a network of Linear layers and 1-Lipschitz
    activations (ReLU, max-pooling) it is an upper bound on the Lipschitz
    constant of the network w.r.t. the linear maps. For conv layers the
    matrix-view spectral norm is not the operator norm of the convolution, so
    the product is a structural indicator, not a certified bound.
    """

    layers: dict[str, LayerStructure]  # by qualified module name, in model order
    tau: float
    n_weights: int  # total over layers
    n_zero: int
    n_effective_zero: int
    sparsity: float  # n_zero / n_weights: the count-weighted mean of the layer sparsities
    effective_sparsity: float  # n_effective_zero / n_weights
    spectral_norm_product: float  # Π σ_1 over layers
    mean_effective_rank_ratio: float  # unweighted mean over layers of effective_rank / full_rank

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the totals and ``layers`` (name -> layer dict)."""
        return {
            "tau": self.tau,
            "n_weights": self.n_weights,
            "n_zero": self.n_zero,
            "n_effective_zero": self.n_effective_zero,
            "sparsity": self.sparsity,
            "effective_sparsity": self.effective_sparsity,
            "spectral_norm_product": self.spectral_norm_product,
            "mean_effective_rank_ratio": self.mean_effective_rank_ratio,
            "layers": {name: layer.to_dict() for name, layer in self.layers.items()},
        }


def _check_tau(tau: float) -> None:
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must be in [0, 1) (a threshold relative to the largest value), got {tau}; the default is {TAU}")


def layer_structure(weight: Tensor, *, tau: float = TAU, name: str = "weight") -> LayerStructure:
    """Structure metrics of one weight tensor, viewed as the matrix ``(shape[0], -1)``.

    Args:
        weight: a Linear weight ``(out, in)`` or a conv kernel ``(out, in, *kernel)``,
            any dtype and device; it is copied to the CPU in float64.
        tau: relative threshold for effective sparsity (``|w| <= tau·max|w|``) and
            numerical rank (``σ_i > tau·σ_1``).
        name: what to call the tensor in error messages (a layer name).

    Returns:
        A :class:`LayerStructure`. An all-zero matrix has effective, stable and
        numerical rank 0 and no NaN anywhere.

    Raises:
        ValueError: if ``weight`` has fewer than 2 dimensions, no entries, or a
            NaN/inf entry, or ``tau`` is outside [0, 1).
    """
    _check_tau(tau)
    if weight.ndim < 2:
        raise ValueError(f"{name}: a weight matrix needs at least 2 dimensions (out, in, ...), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: the weight has no entries (shape {tuple(weight.shape)})")
    w = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name}: the weight contains NaN or inf entries; the model diverged or was loaded wrongly")

    rows, cols = w.shape
    n_weights = rows * cols
    magnitude = w.abs()
    n_zero = int((w == 0).sum())
    n_effective_zero = int((magnitude <= tau * magnitude.max()).sum())

    sigma = torch.linalg.svdvals(w)  # descending, non-negative
    sigma_1 = float(sigma[0])
    nuclear = float(sigma.sum())
    frobenius = float(torch.linalg.vector_norm(w))
    if sigma_1 > 0:
        p = sigma[sigma > 0] / nuclear
        entropy = float(-(p * torch.log(p)).sum())  # 0·log 0 = 0: zero σ are left out
        effective_rank = math.exp(entropy)
        stable_rank = frobenius**2 / sigma_1**2
        numerical_rank = int((sigma > tau * sigma_1).sum())
    else:  # an all-zero matrix: rank 0 by convention
        effective_rank = stable_rank = 0.0
        numerical_rank = 0

    return LayerStructure(
        shape=tuple(weight.shape),
        rows=rows,
        cols=cols,
        tau=tau,
        n_weights=n_weights,
        n_zero=n_zero,
        n_effective_zero=n_effective_zero,
        sparsity=n_zero / n_weights,
        effective_sparsity=n_effective_zero / n_weights,
        singular_values=tuple(sigma.tolist()),
        full_rank=min(rows, cols),
        effective_rank=effective_rank,
        stable_rank=stable_rank,
        numerical_rank=numerical_rank,
        nuclear_norm=nuclear,
        l1_norm=float(magnitude.sum()),
        frobenius_norm=frobenius,
        spectral_norm=sigma_1,
    )


@torch.no_grad()
def effective_weight(module: nn.Module) -> Tensor:
    """The weight a layer computes with.

    ``module.weight``, which for a module parametrised with
    ``torch.nn.utils.parametrize`` is the parametrisation's output (a masked or
    factorised weight). For a module pruned with ``torch.nn.utils.prune`` it is
    ``weight_orig * weight_mask``, which stays right even after ``weight_orig``
    changed since the last forward pass.
    """
    orig, mask = getattr(module, "weight_orig", None), getattr(module, "weight_mask", None)
    if isinstance(orig, Tensor) and isinstance(mask, Tensor):
        return orig * mask
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise ValueError(f"module {type(module).__name__} has no weight tensor")
    return weight


def model_structure(model: nn.Module, *, tau: float = TAU) -> ModelStructure:
    """Structure metrics of every Linear and Conv layer of ``model`` and the totals.

    Works on any ``nn.Module``, including ones with parametrised or pruned
    weights (see :func:`effective_weight`). Biases are not counted.

    Raises:
        ValueError: if the model has no Linear or Conv layer, a layer's weight
            has a NaN/inf entry (the message names the layer), or ``tau`` is
            outside [0, 1).
    """
    _check_tau(tau)
    found = weight_layers(model)
    if not found:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv layer to measure")
    layers = {name: layer_structure(effective_weight(m), tau=tau, name=f"layer {name!r}") for name, m in found.items()}
    n_weights = sum(s.n_weights for s in layers.values())
    n_zero = sum(s.n_zero for s in layers.values())
    n_effective_zero = sum(s.n_effective_zero for s in layers.values())
    return ModelStructure(
        layers=layers,
        tau=tau,
        n_weights=n_weights,
        n_zero=n_zero,
        n_effective_zero=n_effective_zero,
        sparsity=n_zero / n_weights,
        effective_sparsity=n_effective_zero / n_weights,
        spectral_norm_product=math.prod(s.spectral_norm for s in layers.values()),
        mean_effective_rank_ratio=sum(s.effective_rank_ratio for s in layers.values()) / len(layers),
    )
