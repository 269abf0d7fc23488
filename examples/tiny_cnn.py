"""A small CNN defined outside sparank: the worked example of ``sparank audit --model examples.tiny_cnn:tiny_cnn``.

``tiny_cnn(input_shape, num_classes)`` is the factory the audit imports (the uvicorn-style
import path ``package.module:factory``; the audit passes ``input_shape`` and ``num_classes``
because the factory names them). Run this file to train it on scikit-learn's digits and
write its weights as a safetensors file:

    python examples/tiny_cnn.py tiny_cnn.safetensors
    sparank audit --model examples.tiny_cnn:tiny_cnn --weights tiny_cnn.safetensors --dataset digits
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(nn.Module):
    """Two 3x3 convolutions (8 and 16 filters, ReLU), 2x2 max-pooling, a hidden layer of 32, then the logits."""

    def __init__(self, input_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.hidden = nn.Linear(16 * (height // 2) * (width // 2), 32)
        self.logits = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.logits(F.relu(self.hidden(x.flatten(1))))


def tiny_cnn(input_shape: tuple[int, ...], num_classes: int) -> TinyCNN:
    """The factory: a freshly initialised :class:`TinyCNN` for images ``input_shape`` = (C, H, W) and ``num_classes`` classes."""
    return TinyCNN(tuple(input_shape), num_classes)


def train(path: str, *, epochs: int = 30, seed: int = 0) -> float:
    """Train a TinyCNN on digits (Adam, batches of 64), save its weights to ``path`` with safetensors; returns the test accuracy."""
    from safetensors.torch import save_file

    from sparank.data import load_digits

    torch.manual_seed(seed)
    data = load_digits()
    model = tiny_cnn(data.input_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(data.train_x), generator=generator)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(data.test_x).argmax(1) == data.test_y).double().mean())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return acc


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "tiny_cnn.safetensors"
    torch.set_num_threads(1)
    print(f"test accuracy {train(target):.4f}; weights written to {target}")
