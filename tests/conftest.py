"""Shared test set-up: two threads (the CI machine has 2 cores) and a trained digits MLP."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from sparank.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """A small MLP trained on digits (seed 0): a real model with a real decision boundary."""
    from sparank.train import TrainConfig, train_model

    model, _ = train_model("mlp:64", digits, TrainConfig(epochs=15, seed=0))
    return model
