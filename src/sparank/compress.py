"""Post-training compression of a trained model: pruning and rank truncation, each optionally fine-tuned.

A :class:`Compression` is one setting of one family, applied by :func:`compress` to a
*copy* of a model (the model passed in is never modified):

- ``magnitude``: per-layer magnitude pruning: every touched layer loses its ``round(s·n)``
  smallest-magnitude weights (``n`` its weight count), so each layer ends at sparsity ``s``;
- ``global``: global magnitude pruning: the ``round(s·N)`` smallest-magnitude weights over all
  touched layers together (``N`` their total count), so layers end at different sparsities;
- ``structured``: in every touched layer but the output layer, the ``round(s·rows)`` neurons
  (Linear rows) or filters (Conv output channels) of smallest L2 norm are removed: their
  weights and their bias are set to 0;
- ``svd``: every touched layer but the output layer is replaced by its best rank-``r``
  approximation (truncated SVD, Eckart–Young), ``r = ceil(f·min(out, in·kh·kw))``, a conv
  kernel seen as the matrix ``(out, in·kh·kw)``; a layer whose ``r`` is its full rank is
  left bit for bit as it was.

Touched layers are the Linear and Conv layers (:func:`sparank.models.weight_layers`), or the ones
a compression names (``Compression("magnitude", 1.0, layers=("fc2",))`` zeroes layer ``fc2``);
biases are never pruned except with the neuron they belong to (``structured``). Sparsity 0 and
rank fraction 1 are the identity (the copy's weights equal the original's bit for bit).

With training data and ``fine_tune_epochs > 0`` the copy is then fine-tuned (cross-entropy,
Adam) with the compression held fixed: pruned weights stay exactly 0
(``torch.nn.utils.prune`` masks) and truncated layers keep rank at most ``r`` (the ``W = U Vᵀ``
parametrisation of :class:`sparank.regularisers.lowrank.LowRank`); both are baked into plain
weights at the end, so the copy has the original's ``state_dict`` keys and shapes.

Reference: Han et al. 2015 (magnitude pruning, https://arxiv.org/abs/1506.02626), Li et al.
2017 (filters by norm, https://arxiv.org/abs/1608.08710), Denton et al. 2014 (truncated SVD,
https://arxiv.org/abs/1404.0736); Blalock et al. 2020 on per-layer vs global pruning
(https://arxiv.org/abs/2003.03033).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from sparank.models import weight_layers
from sparank.regularisers.lowrank import as_matrix, bake, factorise, target_rank
from sparank.regularisers.sparse import magnitude_mask
from sparank.train import seeded_generator

#: the compression families, in the order reports list them
FAMILIES = ("magnitude", "global", "structured", "svd")
#: what each family's level means
LEVEL_NAMES = {"magnitude": "sparsity", "global": "sparsity", "structured": "sparsity", "svd": "rank fraction"}
#: what each family does, in a few words (reports)
FAMILY_TITLES = {
    "magnitude": "magnitude pruning per layer",
    "global": "global magnitude pruning",
    "structured": "structured pruning of neurons / filters",
    "svd": "SVD rank truncation",
}
#: the default levels: the range a deployment would consider
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_RANK_FRACTIONS = (0.5, 0.25, 0.1, 0.05)


@dataclass(frozen=True)
class Compression:
    """One compression setting: a family and its level (a sparsity in [0, 1), or a rank fraction in (0, 1])."""

    family: str
    level: float
    layers: tuple[str, ...] | None = None  # the qualified names of the layers it touches (None: the family's default)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        level = self.level
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level):
            raise ValueError(f"level of {self.family!r} must be a number, got {level!r}")
        if self.family == "svd" and not 0 < level <= 1:
            raise ValueError(f"rank fraction must be in (0, 1] (1 keeps full rank), got {level:g}; e.g. 0.25")
        if self.family != "svd" and not 0 <= level <= 1:
            raise ValueError(f"sparsity must be in [0, 1] (the fraction of weights set to 0; 1 zeroes the layers), got {level:g}; e.g. 0.9")
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers or not all(isinstance(n, str) for n in self.layers):
                raise ValueError(f"layers must be a non-empty tuple of layer names such as ('fc1',), got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def label(self) -> str:
        """``magnitude 90 %``, ``svd rank 0.25``, ``magnitude 100 % of fc2``: how reports name it."""
        where = "" if self.layers is None else f" of {','.join(self.layers)}"
        if self.family == "svd":
            return f"svd rank {self.level:g}{where}"
        return f"{self.family} {100 * self.level:g} %{where}"

    @property
    def strength(self) -> float:
        """How much is removed, larger is stronger: the sparsity, or 1 − rank fraction."""
        return 1.0 - self.level if self.family == "svd" else self.level


def compressions(
    families: Sequence[str] = FAMILIES,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    rank_fractions: Sequence[float] = DEFAULT_RANK_FRACTIONS,
) -> list[Compression]:
    """Every family at each of its levels, weakest first within a family; ValueError names a bad family or level."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown compression family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if len(set(families)) != len(families):
        raise ValueError(f"a compression family is named twice ({', '.join(families)}); give each once")
    out: list[Compression] = []
    for family in families:
        levels = rank_fractions if family == "svd" else sparsities
        if len(set(levels)) != len(levels):
            raise ValueError(f"{LEVEL_NAMES[family]} levels repeat a value ({', '.join(f'{v:g}' for v in levels)}); give each once")
        found = [Compression(family, float(v)) for v in levels]
        out += sorted(found, key=lambda c: c.strength)
    return out


# --------------------------------------------------------------------------- the operations (in place, on the model given)


def _layers(model: nn.Module, compression: Compression, *, hidden: bool) -> dict[str, nn.Module]:
    """The layers ``compression`` touches: its ``layers``, else every weight layer (``hidden``: all but the last, the output layer)."""
    found = weight_layers(model)
    if not found:
        raise ValueError(f"model {type(model).__name__} has no Linear or Conv layer to compress")
    if compression.layers is not None:
        unknown = [n for n in compression.layers if n not in found]
        if unknown:
            raise ValueError(f"no Linear or Conv layer named {unknown[0]!r} in the model; its layers are: {', '.join(found)}")
        return {n: found[n] for n in compression.layers}
    if not hidden or len(found) < 2:
        return found
    last = list(found)[-1]
    return {name: m for name, m in found.items() if name != last}


def global_magnitude_masks(weights: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """0/1 masks with exactly ``round(sparsity·N)`` zeros in all, at the smallest ``|w|`` over every tensor together.

    ``N`` is the total number of entries; ties in ``|w|`` are broken by ``torch.topk``.
    """
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False).indices.cpu()] = False
    masks: dict[str, Tensor] = {}
    start = 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w).to(device=w.device, dtype=w.dtype)
        start += w.numel()
    return masks


def unit_mask(weight: Tensor, sparsity: float) -> Tensor:
    """A 0/1 mask shaped like ``weight`` zeroing the ``round(sparsity·rows)`` rows (neurons / filters) of smallest L2 norm."""
    norms = as_matrix(weight.detach()).norm(dim=1)
    k = round(sparsity * len(norms))
    keep = torch.ones(len(norms), dtype=weight.dtype, device=weight.device)
    if k > 0:
        keep[torch.topk(norms, k, largest=False).indices] = 0.0
    return keep.view(-1, *([1] * (weight.ndim - 1))).expand_as(weight).contiguous()


def truncate_rank(weight: Tensor, rank: int) -> Tensor:
    """The best rank-``rank`` approximation of ``weight`` seen as ``(out, in·kh·kw)`` (truncated SVD in float64), reshaped back."""
    m = as_matrix(weight.detach()).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return approx.to(weight.dtype).reshape(weight.shape)


def _masks(model: nn.Module, compression: Compression) -> dict[str, tuple[nn.Module, str, Tensor]]:
    """The masks of a pruning family: (module, parameter name, mask), by a key per parameter."""
    layers = _layers(model, compression, hidden=compression.family == "structured")
    s = compression.level
    found: dict[str, tuple[nn.Module, str, Tensor]] = {}
    if compression.family == "magnitude":
        for name, m in layers.items():
            found[name] = (m, "weight", magnitude_mask(m.weight, s))
    elif compression.family == "global":
        masks = global_magnitude_masks({name: m.weight for name, m in layers.items()}, s)
        for name, m in layers.items():
            found[name] = (m, "weight", masks[name])
    else:  # structured
        for name, m in layers.items():
            mask = unit_mask(m.weight, s)
            found[name] = (m, "weight", mask)
            if getattr(m, "bias", None) is not None:
                found[name + ".bias"] = (m, "bias", mask.reshape(mask.shape[0], -1)[:, 0].clone())
    return found


@torch.no_grad()
def _prune(model: nn.Module, compression: Compression) -> dict[str, tuple[nn.Module, str, Tensor]]:
    masks = _masks(model, compression)
    for module, param, mask in masks.values():
        getattr(module, param).mul_(mask)
    return masks


@torch.no_grad()
def _truncate(model: nn.Module, compression: Compression) -> dict[str, tuple[nn.Module, int]]:
    """Truncate the hidden layers in place; returns (module, rank) of each layer actually truncated (rank below full)."""
    done: dict[str, tuple[nn.Module, int]] = {}
    for name, m in _layers(model, compression, hidden=True).items():
        rank = target_rank(m.weight.shape, compression.level)
        if rank < min(as_matrix(m.weight).shape):
            m.weight.copy_(truncate_rank(m.weight, rank))
            done[name] = (m, rank)
    return done


# --------------------------------------------------------------------------- fine-tuning with the compression held


@dataclass(frozen=True)
class FineTune:
    """How a compressed copy is fine-tuned on the training data (Adam on cross-entropy)."""

    epochs: int = 0
    lr: float = 1e-3  # Adam's default, as sparank trains and fine-tunes
    batch_size: int = 64
    seed: int = 0  # the data order

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"fine_tune_epochs must be an integer >= 0 (0: no fine-tuning), got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"fine_tune_lr must be a finite number > 0, got {self.lr!r}; e.g. 1e-3")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"fine_tune_batch_size must be an integer >= 1, got {self.batch_size!r}")


def _fine_tune(model: nn.Module, inputs: Tensor, labels: Tensor, settings: FineTune) -> None:
    """``settings.epochs`` epochs of Adam on cross-entropy over ``(inputs, labels)``, data order from ``settings.seed``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    generator = seeded_generator(settings.seed, "shuffle")  # the data order, as training draws it
    device = next(iter(params)).device if params else inputs.device
    n = len(inputs)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = F.cross_entropy(model(inputs[idx].to(device)), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()


def _parameter_order(module: nn.Module) -> None:
    """Register ``module``'s own parameters again as weight first, then bias (``prune.remove`` re-adds the pruned one last)."""
    names = sorted(module._parameters, key=lambda n: {"weight": 0, "bias": 1}.get(n, 2))
    for name in names:
        value = getattr(module, name)
        delattr(module, name)
        setattr(module, name, value)


def compress(
    model: nn.Module,
    compression: Compression,
    *,
    train_data: tuple[Tensor, Tensor] | None = None,
    fine_tune: FineTune | None = None,
) -> nn.Module:
    """A compressed copy of ``model`` (``model`` itself is not modified), fine-tuned if asked, in eval mode.

    Args:
        model: any module with Linear or Conv layers.
        compression: the family and level.
        train_data: ``(inputs, labels)`` to fine-tune on; needed when ``fine_tune.epochs > 0``.
        fine_tune: how to fine-tune (None or 0 epochs: no fine-tuning). Pruned weights
            stay 0 and truncated layers keep their rank during it.

    Raises:
        ValueError: a model without Linear or Conv layers, or fine-tuning asked without ``train_data``.
    """
    settings = fine_tune or FineTune()
    if settings.epochs > 0 and train_data is None:
        raise ValueError("fine-tuning needs train_data=(inputs, labels); pass it or set fine_tune epochs to 0")
    copied = copy.deepcopy(model)
    for p in copied.parameters():
        p.grad = None
    if compression.family == "svd":
        truncated = _truncate(copied, compression)
        if settings.epochs > 0 and truncated:
            for module, rank in truncated.values():
                factorise(module, rank)  # W = U Vᵀ from the SVD: rank ≤ r while fine-tuning
            _fine_tune(copied, *train_data, settings)  # type: ignore[misc]
            for module, _ in truncated.values():
                bake(module)
        elif settings.epochs > 0:
            _fine_tune(copied, *train_data, settings)  # type: ignore[misc]
    else:
        masks = _prune(copied, compression)
        if settings.epochs > 0:
            for module, param, mask in masks.values():
                prune.custom_from_mask(module, param, mask)  # param = param_orig * mask: pruned entries get no update
            _fine_tune(copied, *train_data, settings)  # type: ignore[misc]
            for module, param, _ in masks.values():
                prune.remove(module, param)
            for module in {id(m): m for m, _, _ in masks.values()}.values():
                _parameter_order(module)
    copied.eval()
    return copied


__all__ = [
    "DEFAULT_RANK_FRACTIONS",
    "DEFAULT_SPARSITIES",
    "FAMILIES",
    "Compression",
    "FineTune",
    "compress",
    "compressions",
    "global_magnitude_masks",
    "truncate_rank",
    "unit_mask",
]
