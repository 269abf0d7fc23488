"""Structure metrics (PROTOCOL §4) against hand computations and independent numpy SVDs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

from sparank.models import build_model
from sparank.structure import layer_structure, model_structure


def test_diagonal_matrix_ranks_by_hand() -> None:
    sigma = [4.0, 2.0, 1.0, 1e-4]  # the last is below tau·σ_1 = 4e-3
    w = torch.zeros(5, 4, dtype=torch.float64)
    w[range(4), range(4)] = torch.tensor(sigma, dtype=torch.float64)
    w[[0, 1], :] = w[[1, 0], :]  # permuting rows keeps the singular values
    s = layer_structure(w)

    total = sum(sigma)
    p = [x / total for x in sigma]
    effective_rank = math.exp(-sum(q * math.log(q) for q in p))
    stable_rank = sum(x * x for x in sigma) / 16.0
    assert s.singular_values == pytest.approx(sigma, rel=1e-12)
    assert s.effective_rank == pytest.approx(effective_rank, rel=1e-12)
    assert s.stable_rank == pytest.approx(stable_rank, rel=1e-12)  # (16+4+1+1e-8)/16
    assert s.numerical_rank == 3
    assert s.full_rank == 4
    assert s.nuclear_norm == pytest.approx(total)
    assert s.spectral_norm == pytest.approx(4.0)
    assert s.frobenius_norm == pytest.approx(math.sqrt(21 + 1e-8))
    assert s.l1_norm == pytest.approx(total)
    # 20 entries, 16 exactly zero; the 1e-4 entry is also below tau·max|w|
    assert (s.n_weights, s.n_zero, s.n_effective_zero) == (20, 16, 17)
    assert s.sparsity == pytest.approx(16 / 20)
    assert s.effective_sparsity == pytest.approx(17 / 20)


def test_tau_changes_numerical_rank_and_effective_sparsity() -> None:
    w = torch.diag(torch.tensor([1.0, 0.1, 0.01]))
    assert layer_structure(w, tau=0.0).numerical_rank == 3
    assert layer_structure(w, tau=0.05).numerical_rank == 2
    assert layer_structure(w, tau=0.5).numerical_rank == 1
    assert layer_structure(w, tau=0.05).n_effective_zero == 6 + 1
    with pytest.raises(ValueError, match="tau"):
        layer_structure(w, tau=1.5)


def test_identity_and_rank_one() -> None:
    eye = layer_structure(torch.eye(7))
    assert eye.effective_rank == pytest.approx(7.0)
    assert eye.stable_rank == pytest.approx(7.0)
    assert eye.numerical_rank == 7
    assert eye.effective_rank_ratio == pytest.approx(1.0)

    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 1, generator=g), torch.randn(1, 9, generator=g)
    one = layer_structure(u @ v)
    assert one.effective_rank == pytest.approx(1.0, abs=1e-5)
    assert one.stable_rank == pytest.approx(1.0, abs=1e-5)
    assert one.numerical_rank == 1


@pytest.mark.parametrize("r", [1, 3, 5])
def test_rank_r_product_has_numerical_rank_r(r: int) -> None:
    g = torch.Generator().manual_seed(r)
    w = torch.randn(12, r, generator=g, dtype=torch.float64) @ torch.randn(r, 20, generator=g, dtype=torch.float64)
    s = layer_structure(w)
    assert s.numerical_rank == r
    assert s.full_rank == 12
    assert 1.0 <= s.stable_rank <= r + 1e-9
    assert 1.0 <= s.effective_rank <= r + 1e-9


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_rank_inequalities_on_random_matrices(rows: int, cols: int, seed: int) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    s = layer_structure(w)
    assert 1.0 - 1e-9 <= s.stable_rank <= s.numerical_rank + 1e-9
    assert s.numerical_rank <= s.full_rank == min(rows, cols)
    assert 1.0 - 1e-9 <= s.effective_rank <= s.full_rank + 1e-9
    assert s.spectral_norm <= s.frobenius_norm + 1e-9 <= s.nuclear_norm + 2e-9
    expected = np.linalg.svd(w.double().numpy(), compute_uv=False)
    assert np.allclose(s.singular_values, expected, rtol=1e-10, atol=1e-12)


def test_sparsity_with_known_zeros() -> None:
    w = torch.arange(1.0, 31.0).reshape(5, 6)
    w[0, :] = 0.0
    w[2, 3] = 0.0
    w[4, 5] = 1e-5  # tiny but not zero: counts for effective sparsity only
    s = layer_structure(w)
    assert s.n_zero == 7
    assert s.sparsity == pytest.approx(7 / 30)
    assert s.n_effective_zero == 8
    assert s.l1_norm == pytest.approx(float(w.abs().sum()))


def test_conv_kernel_is_viewed_as_out_by_in_kh_kw() -> None:
    conv = nn.Conv2d(3, 4, kernel_size=(2, 3))
    s = layer_structure(conv.weight)
    kernel = conv.weight.detach().double().numpy()
    expected = np.linalg.svd(kernel.reshape(4, 3 * 2 * 3), compute_uv=False)
    assert (s.rows, s.cols, s.shape) == (4, 18, (4, 3, 2, 3))
    assert s.full_rank == 4
    assert np.allclose(s.singular_values, expected, rtol=1e-10)
    assert s.frobenius_norm == pytest.approx(float(np.linalg.norm(kernel)))


def test_model_totals_are_weighted_by_count() -> None:
    torch.manual_seed(0)
    model = build_model("mlp:5", (1, 2, 3), 4)  # fc1: 5x6 = 30 weights, out: 4x5 = 20 weights
    with torch.no_grad():
        model.fc1.weight[:3, :] = 0.0  # 18 zeros in fc1
        model.out.weight[0, 0] = 0.0  # 1 zero in out
        model.fc1.bias.zero_()  # biases are not counted
    s = model_structure(model)
    assert list(s.layers) == ["fc1", "out"]
    assert s.n_weights == 50
    assert s.n_zero == 19
    assert s.sparsity == pytest.approx(19 / 50)  # not the mean of 18/30 and 1/20
    assert s.layers["fc1"].sparsity == pytest.approx(18 / 30)
    assert s.layers["fc1"].numerical_rank == 2
    expected_product = np.linalg.norm(model.fc1.weight.detach().double().numpy(), 2) * np.linalg.norm(
        model.out.weight.detach().double().numpy(), 2
    )
    assert s.spectral_norm_product == pytest.approx(expected_product, rel=1e-10)
    ratios = [s.layers[n].effective_rank / min(s.layers[n].rows, s.layers[n].cols) for n in ("fc1", "out")]
    assert s.mean_effective_rank_ratio == pytest.approx(sum(ratios) / 2)


def test_all_zero_layer_gives_no_nan() -> None:
    s = layer_structure(torch.zeros(3, 4))
    assert (s.effective_rank, s.stable_rank, s.numerical_rank, s.spectral_norm) == (0.0, 0.0, 0, 0.0)
    assert s.sparsity == 1.0 and s.effective_sparsity == 1.0
    model = build_model("mlp:3", (1, 2, 2), 2)
    with torch.no_grad():
        model.out.weight.zero_()
    m = model_structure(model)
    text = json.dumps(m.to_dict(), allow_nan=False)  # raises on NaN or inf
    assert m.spectral_norm_product == 0.0
    assert '"effective_rank": 0.0' in text


def test_nan_layer_raises_naming_the_layer() -> None:
    model = build_model("mlp:3", (1, 2, 2), 2)
    with torch.no_grad():
        model.out.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="'out'"):
        model_structure(model)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="2 dimensions"):
        layer_structure(torch.ones(5))
    with pytest.raises(ValueError, match="no Linear or Conv"):
        model_structure(nn.Sequential(nn.ReLU()))


class _RankOne(nn.Module):
    """A parametrisation that keeps only the first row (a rank-one weight)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(w)
        mask[0] = 1.0
        return w * mask


def test_parametrised_and_pruned_modules_use_the_effective_weight() -> None:
    torch.manual_seed(1)
    model = build_model("mlp:6", (1, 2, 4), 3)
    parametrize.register_parametrization(model.fc1, "weight", _RankOne())
    prune.l1_unstructured(model.out, "weight", amount=0.5)  # 9 of 18 weights
    with torch.no_grad():
        model.out.weight_orig.add_(1.0)  # changed after pruning: the mask still applies
    s = model_structure(model)
    assert list(s.layers) == ["fc1", "out"]
    assert s.layers["fc1"].numerical_rank == 1
    assert s.layers["fc1"].n_zero == 5 * 8
    assert s.layers["out"].n_zero == 9
    expected_l1 = float((model.out.weight_orig * model.out.weight_mask).detach().abs().sum())
    assert s.layers["out"].l1_norm == pytest.approx(expected_l1, rel=1e-6)
    assert s.n_zero == 49


def test_to_dict_is_json_ready_and_complete() -> None:
    model = build_model("cnn:2,3,5", (1, 8, 8), 3)
    d = model_structure(model).to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert set(back["layers"]) == {"conv1", "conv2", "fc1", "out"}
    conv2 = back["layers"]["conv2"]
    assert conv2["shape"] == [3, 2, 3, 3] and conv2["cols"] == 18
    assert len(conv2["singular_values"]) == 3
    assert back["n_weights"] == sum(layer["n_weights"] for layer in back["layers"].values())
