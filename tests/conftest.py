"""Shared test set-up: one torch thread and a trained digits MLP.

The tests use digits-sized models, for which a second OpenMP thread adds
synchronisation and nothing else; on a loaded 2-core machine two spinning
threads made a 0.3 s training run take 39 s. The CLI tests also pass
``--threads 1``, so every test runs with the same setting.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


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


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one torch thread: a CLI command without --threads sets all cores and keeps them,
    and a float result can depend on the thread count (BLAS reduction order)."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
