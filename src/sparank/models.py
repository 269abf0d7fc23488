"""The classifiers sparank studies: linear, MLP and a small CNN, built from a short spec.

A spec is a string: ``"linear"``, ``"mlp"`` (= ``"mlp:300,100"``, the classic
FC-300-100 net), ``"mlp:64"``, ``"cnn"`` (= ``"cnn:16,32,128"``: two 3x3 conv
layers with 16 and 32 filters, each followed by ReLU and 2x2 max-pooling, then
FC-128 and the output layer). Every model takes a batch shaped
``(N, *input_shape)`` with pixels in ``[0, 1]`` and returns logits ``(N, K)``.
Layers are named (``fc1``, ``conv1``, ``out``...) so that per-layer metrics
and state-dict keys read well.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

ARCHS = ("linear", "mlp", "cnn")
DEFAULT_WIDTHS = {"linear": (), "mlp": (300, 100), "cnn": (16, 32, 128)}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed architecture spec: the family and its widths."""

    arch: str
    widths: tuple[int, ...]

    def __str__(self) -> str:
        if not self.widths:
            return self.arch
        return f"{self.arch}:{','.join(str(w) for w in self.widths)}"


def parse_spec(spec: str) -> ModelSpec:
    """Parse ``"arch[:w1,w2,...]"``; raises ValueError naming the problem and the fix.

    A colon promises widths: ``"mlp:"`` (or ``"mlp:300,,100"``) is an error,
    never a silent default; ``"mlp"`` alone means the default widths.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a model spec is a string such as 'mlp:300,100', got {type(spec).__name__}")
    arch, colon, rest = spec.strip().partition(":")
    arch = arch.strip()
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} in spec {spec!r}; use one of {', '.join(ARCHS)} (e.g. 'mlp:300,100')")
    if not colon:
        return ModelSpec(arch, DEFAULT_WIDTHS[arch])
    if arch == "linear":
        raise ValueError(f"'linear' takes no widths (got {spec!r}); use 'linear'")
    default = ",".join(str(w) for w in DEFAULT_WIDTHS[arch])
    if not rest.strip():
        raise ValueError(
            f"spec {spec!r} has a colon but no widths; give them (e.g. '{arch}:{default}') or write '{arch}' for the default {default}"
        )
    parts = [w.strip() for w in rest.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"bad widths {rest!r} in spec {spec!r}; give comma-separated positive integers, e.g. '{arch}:{default}'")
    widths = tuple(int(w) for w in parts)
    if any(w <= 0 for w in widths):
        raise ValueError(f"widths in spec {spec!r} must be positive integers, e.g. '{arch}:{default}'")
    if arch == "cnn" and len(widths) != 3:
        raise ValueError(
            f"'cnn' takes exactly three widths: conv1 filters, conv2 filters, hidden units (got {spec!r}); e.g. 'cnn:16,32,128'"
        )
    return ModelSpec(arch, widths)


#: the largest model :func:`build_model` builds unless told otherwise: 10⁸ parameters, 400 MB of float32
#: (the classic FC-300-100 on 28x28 images has 2.7·10⁵); larger requests are almost always a typo
MAX_PARAMETERS = 100_000_000


def count_parameters(spec: str | ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    """The number of parameters (weights and biases) :func:`build_model` would allocate, computed without allocating."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.arch in ("linear", "mlp"):
        width, total = math.prod(input_shape), 0
        for w in (*spec.widths, num_classes):
            total += width * w + w
            width = w
        return total
    channels, height, width_px = input_shape
    c1, c2, hidden = spec.widths
    flat = c2 * (height // 4) * (width_px // 4)
    return (channels * 9 * c1 + c1) + (c1 * 9 * c2 + c2) + (flat * hidden + hidden) + (hidden * num_classes + num_classes)


def build_model(
    spec: str | ModelSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    max_parameters: int | None = MAX_PARAMETERS,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Build the classifier for ``spec`` on inputs shaped ``input_shape`` (C, H, W) with ``num_classes`` outputs.

    Each layer is initialised as torch's ``reset_parameters`` does; with ``generator`` (a CPU
    ``torch.Generator``) every draw comes from it (:func:`init_parameters`) and the global RNG is
    neither used nor advanced, so the same generator state gives the same weights in any thread
    or process; without it, from the global RNG (``torch.manual_seed``), as torch's own layers.

    Raises:
        ValueError: a bad spec, fewer than 2 classes, an input shape the
            architecture cannot take, or more than ``max_parameters``
            parameters (counted before anything is allocated; ``None``: no limit).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if spec.arch == "cnn" and len(input_shape) != 3:
        raise ValueError(f"'cnn' needs image inputs shaped (C, H, W), got input_shape={input_shape}")
    count = count_parameters(spec, input_shape, num_classes)
    if max_parameters is not None and count > max_parameters:
        raise ValueError(
            f"model {spec} on inputs {tuple(input_shape)} would have {count:,} parameters ({count * 4 / 1e9:.1f} GB of float32), "
            f"over the limit of {max_parameters:,}; use smaller widths (e.g. 'mlp:300,100')"
        )
    device = "meta" if generator is not None else None  # shapes only: initialised below from the generator
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    d = math.prod(input_shape)
    if spec.arch in ("linear", "mlp"):
        layers["flatten"] = nn.Flatten()
        width = d
        for i, w in enumerate(spec.widths, start=1):
            layers[f"fc{i}"] = nn.Linear(width, w, device=device)
            layers[f"relu{i}"] = nn.ReLU()
            width = w
        layers["out"] = nn.Linear(width, num_classes, device=device)
        return _initialised(nn.Sequential(layers), generator)

    if len(input_shape) != 3:
        raise ValueError(f"'cnn' needs image inputs shaped (C, H, W), got input_shape={input_shape}")
    channels, height, width_px = input_shape
    c1, c2, hidden = spec.widths
    if height < 4 or width_px < 4:
        raise ValueError(f"'cnn' pools twice by 2 and needs images of at least 4x4, got {height}x{width_px}")
    layers["conv1"] = nn.Conv2d(channels, c1, kernel_size=3, padding=1, device=device)
    layers["relu1"] = nn.ReLU()
    layers["pool1"] = nn.MaxPool2d(2)
    layers["conv2"] = nn.Conv2d(c1, c2, kernel_size=3, padding=1, device=device)
    layers["relu2"] = nn.ReLU()
    layers["pool2"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(c2 * (height // 4) * (width_px // 4), hidden, device=device)
    layers["relu3"] = nn.ReLU()
    layers["out"] = nn.Linear(hidden, num_classes, device=device)
    return _initialised(nn.Sequential(layers), generator)


def _initialised(model: nn.Sequential, generator: torch.Generator | None) -> nn.Sequential:
    """``model`` itself (initialised from the global RNG) or, with ``generator``, built on the meta device: allocated and initialised from it."""
    if generator is None:
        return model
    model.to_empty(device=generator.device)
    init_parameters(model, generator)
    return model


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every Linear and Conv layer of ``model`` in place as their ``reset_parameters`` does, drawing from ``generator``.

    Per layer, in ``model.modules()`` order: the weight from ``kaiming_uniform_(a=√5)``
    (uniform in ±1/√fan_in), then the bias uniform in ±1/√fan_in (0 when fan_in is 0),
    exactly torch's default initialisation of ``nn.Linear`` and ``nn.Conv*d`` but with
    ``generator=`` (the global RNG is not touched). The generator must be on the
    parameters' device.
    """
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            fan_in = module.weight[0].numel()  # in_features, or in_channels·kernel size
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that carry a weight matrix or conv kernel (Linear, Conv*), by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` exactly; ValueError in one line if the weights don't fit the architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
    if mismatched:
        problems.append(f"shape (file vs model) {', '.join(mismatched[:3])}{' ...' if len(mismatched) > 3 else ''}")
    if problems:
        raise ValueError(f"weights in {source} do not fit the architecture: {'; '.join(problems)}; check --arch and --dataset")
    model.load_state_dict(state_dict)
