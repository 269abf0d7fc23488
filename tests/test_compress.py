"""Post-training compression (sparank.compress): each family reaches what it is asked, checked independently.

Pruning: zero counts against ``round(s·n)`` and the magnitude order by brute force (sorting);
global against per-layer semantics; structured rows against a sort of the row norms. SVD
truncation: the rank asked and Eckart–Young (the error equals the tail singular values).
Fine-tuning moves the weights but keeps the mask and the rank.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparank.compress import Compression, FineTune, compress, compressions, global_magnitude_masks, truncate_rank
from sparank.models import build_model, weight_layers
from sparank.regularisers.lowrank import target_rank
from sparank.train import TrainConfig, train_model


@pytest.fixture(scope="module")
def cnn(digits):
    """A small trained CNN on digits: conv kernels as well as Linear layers."""
    model, _ = train_model("cnn:4,8,16", digits, TrainConfig(epochs=2, seed=0))
    return model


def _weights(model):
    return {name: m.weight.detach().clone() for name, m in weight_layers(model).items()}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("s", [0.3, 0.9])
def test_per_layer_magnitude_reaches_the_sparsity_in_every_layer(digits_mlp, s):
    before = _weights(digits_mlp)
    assert all(int((w == 0).sum()) == 0 for w in before.values())  # no zero to begin with: the counts below are the pruning's
    copy = compress(digits_mlp, Compression("magnitude", s))
    for name, m in weight_layers(copy).items():
        w, orig = m.weight.detach(), before[name]
        zero = w == 0
        assert int(zero.sum()) == round(s * w.numel())
        assert torch.equal(w[~zero], orig[~zero])  # the kept weights are untouched
        assert orig[zero].abs().max() <= orig[~zero].abs().min()  # the smallest |w| went, layer by layer
        assert torch.equal(m.bias, dict(digits_mlp.named_modules())[name].bias)


def test_global_magnitude_counts_over_all_layers_and_prunes_the_smallest_overall(digits_mlp):
    s = 0.6
    before = _weights(digits_mlp)
    copy = compress(digits_mlp, Compression("global", s))
    after = _weights(copy)
    total = sum(w.numel() for w in before.values())
    assert sum(int((w == 0).sum()) for w in after.values()) == round(s * total)
    pruned = torch.cat([before[n][after[n] == 0].abs() for n in before])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in before])
    everything = torch.sort(torch.cat([w.abs().flatten() for w in before.values()])).values
    assert pruned.max() <= kept.min()
    assert math.isclose(float(pruned.sum()), float(everything[: round(s * total)].sum()), rel_tol=1e-6)  # brute force: the k smallest
    per_layer = [float((after[n] == 0).double().mean()) for n in after]
    assert max(per_layer) - min(per_layer) > 0.1  # global, not per layer: the layers end at different sparsities


def test_global_masks_break_ties_exactly():
    masks = global_magnitude_masks({"a": torch.zeros(3, 4), "b": torch.ones(2, 2)}, 0.5)
    assert int(sum((m == 0).sum() for m in masks.values())) == 8
    assert int((masks["b"] == 0).sum()) == 0


def test_structured_removes_the_rows_of_smallest_norm_with_their_bias(cnn):
    s = 0.5
    copy = compress(cnn, Compression("structured", s))
    layers, orig = weight_layers(copy), weight_layers(cnn)
    names = list(layers)
    for name in names[:-1]:
        w, o = layers[name].weight.detach(), orig[name].weight.detach()
        rows = w.reshape(w.shape[0], -1)
        zero_rows = torch.nonzero((rows == 0).all(dim=1)).squeeze(1)
        k = round(s * w.shape[0])
        assert len(zero_rows) == k
        smallest = torch.argsort(o.reshape(o.shape[0], -1).norm(dim=1))[:k]
        assert set(zero_rows.tolist()) == set(smallest.tolist())
        assert torch.all(layers[name].bias[zero_rows] == 0)
        kept = torch.ones(w.shape[0], dtype=torch.bool)
        kept[zero_rows] = False
        assert torch.equal(w[kept], o[kept]) and torch.equal(layers[name].bias[kept], orig[name].bias[kept])
    assert torch.equal(layers[names[-1]].weight, orig[names[-1]].weight)  # the output layer keeps every class


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_svd_gives_the_asked_rank_and_the_best_approximation(cnn, fraction):
    copy = compress(cnn, Compression("svd", fraction))
    layers, orig = weight_layers(copy), weight_layers(cnn)
    names = list(layers)
    for name in names[:-1]:
        o = orig[name].weight.detach().double().reshape(orig[name].weight.shape[0], -1)
        w = layers[name].weight.detach().double().reshape(o.shape)
        r = target_rank(orig[name].weight.shape, fraction)
        sigma = torch.linalg.svdvals(o)
        if r >= len(sigma):
            assert torch.equal(layers[name].weight, orig[name].weight)
            continue
        assert int(torch.linalg.matrix_rank(w, rtol=1e-5)) == r
        error = o - w
        # Eckart–Young: the best rank-r error is the tail of the spectrum (Frobenius and spectral norms)
        assert math.isclose(float(error.norm() ** 2), float((sigma[r:] ** 2).sum()), rel_tol=1e-4)
        assert math.isclose(float(torch.linalg.matrix_norm(error, 2)), float(sigma[r]), rel_tol=1e-4)
    assert torch.equal(layers[names[-1]].weight, orig[names[-1]].weight)


def test_truncate_rank_matches_a_brute_force_check_against_random_rank_r_matrices():
    torch.manual_seed(0)
    w = torch.randn(12, 9)
    best = truncate_rank(w, 3)
    for _ in range(50):  # no rank-3 matrix is closer (Eckart–Young), here against random ones near the answer
        other = best + 0.05 * torch.randn(12, 3) @ torch.randn(3, 9)
        u, s, vh = torch.linalg.svd(other)
        other = (u[:, :3] * s[:3]) @ vh[:3]
        assert (w - best).norm() <= (w - other).norm() + 1e-5


@pytest.mark.parametrize("compression", [Compression("magnitude", 0.0), Compression("global", 0.0), Compression("structured", 0.0),
                                         Compression("svd", 1.0)], ids=lambda c: c.label)  # fmt: skip
def test_sparsity_zero_and_full_rank_are_the_identity_bit_for_bit(cnn, compression):
    assert _same(_state(compress(cnn, compression)), _state(cnn))


def test_compress_leaves_the_model_untouched(cnn):
    before = _state(cnn)
    for c in compressions():
        compress(cnn, c)
    assert _same(_state(cnn), before)


def test_fine_tuning_keeps_the_mask(digits):
    model = build_model("mlp:32", (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
    one_shot = compress(model, Compression("magnitude", 0.8))
    tuned = compress(model, Compression("magnitude", 0.8), train_data=(digits.train_x, digits.train_y), fine_tune=FineTune(epochs=1))
    for (name, a), b in zip(weight_layers(one_shot).items(), weight_layers(tuned).values()):
        assert torch.equal(a.weight == 0, b.weight == 0), name  # the same zeros, no more, no fewer
        assert not torch.equal(a.weight, b.weight)  # and the kept weights did train
    assert list(tuned.state_dict()) == list(model.state_dict())  # plain weights again: the same keys, in order


def test_fine_tuning_keeps_the_rank(digits):
    model = build_model("mlp:32", (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
    one_shot = compress(model, Compression("svd", 0.25))
    tuned = compress(model, Compression("svd", 0.25), train_data=(digits.train_x, digits.train_y), fine_tune=FineTune(epochs=1))
    w0, w1 = one_shot.fc1.weight.detach(), tuned.fc1.weight.detach()
    assert not torch.equal(w0, w1)
    assert int(torch.linalg.matrix_rank(w1.double(), rtol=1e-5)) == target_rank(w1.shape, 0.25) == 8
    assert list(tuned.state_dict()) == list(model.state_dict())


def test_structured_fine_tuning_keeps_removed_neurons_removed(digits):
    model = build_model("mlp:32", (1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
    tuned = compress(model, Compression("structured", 0.5), train_data=(digits.train_x, digits.train_y), fine_tune=FineTune(epochs=1))
    dead = (tuned.fc1.weight == 0).all(dim=1)
    assert int(dead.sum()) == 16 and torch.all(tuned.fc1.bias[dead] == 0)


def test_zeroing_a_named_layer(digits_mlp):
    copy = compress(digits_mlp, Compression("magnitude", 1.0, layers=("fc1",)))
    assert torch.all(copy.fc1.weight == 0) and torch.equal(copy.out.weight, digits_mlp.out.weight)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Compression("dropout", 0.5), "family must be one of"),
        (lambda: Compression("magnitude", 1.5), "sparsity must be in [0, 1]"),
        (lambda: Compression("svd", 0.0), "rank fraction must be in (0, 1]"),
        (lambda: Compression("svd", float("nan")), "must be a number"),
        (lambda: Compression("magnitude", 0.5, layers="fc1"), "tuple of layer names"),
        (lambda: compressions(["svd", "svd"]), "named twice"),
        (lambda: compressions(["magnitude"], sparsities=[0.5, 0.5]), "repeat a value"),
        (lambda: FineTune(epochs=-1), "fine_tune_epochs must be"),
    ],
)
def test_bad_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        make()


def test_unknown_layer_and_missing_training_data_are_named(digits_mlp):
    with pytest.raises(ValueError, match="no Linear or Conv layer named 'fc9'"):
        compress(digits_mlp, Compression("magnitude", 0.5, layers=("fc9",)))
    with pytest.raises(ValueError, match="fine-tuning needs train_data"):
        compress(digits_mlp, Compression("magnitude", 0.5), fine_tune=FineTune(epochs=1))
