"""Tests for sparank.data: the IDX reader, dataset lookup, digits and the evaluation subset.

The IDX files are written here by a small writer of our own (struct + gzip),
independent of the reader under test. No test downloads anything; the one that
reads the real Fashion-MNIST skips when the Debian package is not installed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparank import data
from sparank.data import DATASETS, DatasetError, eval_subset, find_dataset_dir, load_dataset, load_digits, read_idx

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


# --- an IDX writer of our own, independent of the reader ------------------------------------------


def idx_bytes(array: np.ndarray, *, code: int | None = None) -> bytes:
    """IDX encoding: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    code = CODES[array.dtype.name] if code is None else code
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes) -> Path:
    """Write bytes, gzip-compressed when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_idx_dataset(directory: Path, *, n_train: int = 6, n_test: int = 4, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four files of a tiny 28x28 MNIST-format dataset; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, :2] = (0, 255)  # both ends of the pixel range appear
    for key, array in arrays.items():
        write(directory / (FILES[key] + (".gz" if gz else "")), idx_bytes(array))
    return arrays


@pytest.fixture(autouse=True)
def isolated_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the user's $SPARANK_DATA; the system root is an empty directory under tmp_path."""
    monkeypatch.delenv("SPARANK_DATA", raising=False)
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", system)
    return system


# --- read_idx: round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype: str, gz: bool) -> None:
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(3, 5, 2)) * 100).astype(dtype)
    path = write(tmp_path / ("x.idx" + (".gz" if gz else "")), idx_bytes(array))
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)  # native byte order
    assert out.shape == (3, 5, 2)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # writable: safe to hand to torch.from_numpy


def test_read_idx_one_dimension_and_header_bytes(tmp_path: Path) -> None:
    # hand-written bytes: 3 labels 7, 0, 9
    path = write(tmp_path / "labels", bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 0, 9]))
    np.testing.assert_array_equal(read_idx(path, ndim=1, dtype="uint8"), [7, 0, 9])


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    # 258 = 0x00000102 big-endian; a little-endian read would give 0x02010000
    path = write(tmp_path / "ints", bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 2]))
    assert read_idx(path).tolist() == [258]


# --- read_idx: malformed files, each error names the file and the problem --------------------------


def error_for(path: Path, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        read_idx(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path: Path, gz: bool) -> None:
    payload = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    payload[0] = 0x12
    path = write(tmp_path / ("bad" + (".gz" if gz else "")), bytes(payload))
    assert "magic" in error_for(path)


def test_gzip_without_gz_suffix_hints(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8))))
    message = error_for(path)
    assert "magic" in message and "gzip" in message


def test_unknown_dtype_code(tmp_path: Path) -> None:
    path = write(tmp_path / "bad", idx_bytes(np.zeros((2, 2), np.uint8), code=0x07))
    message = error_for(path)
    assert "type code 0x07" in message


def test_unexpected_dtype(tmp_path: Path) -> None:
    path = write(tmp_path / "labels", idx_bytes(np.zeros(4, np.int32)))
    message = error_for(path, dtype="uint8")
    assert "uint8" in message and "int32" in message


def test_wrong_ndim(tmp_path: Path) -> None:
    path = write(tmp_path / "images", idx_bytes(np.zeros((4, 28), np.uint8)))
    message = error_for(path, ndim=3)
    assert "expected 3 dimension" in message and "declares 2" in message


def test_zero_ndim_and_short_header(tmp_path: Path) -> None:
    assert "0 dimensions" in error_for(write(tmp_path / "a", bytes([0, 0, 8, 0])))
    assert "too short" in error_for(write(tmp_path / "b", bytes([0, 0])))
    assert "truncated header" in error_for(write(tmp_path / "c", bytes([0, 0, 8, 3, 0, 0, 0, 1])))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path: Path, gz: bool) -> None:
    payload = idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5]
    message = error_for(write(tmp_path / ("t" + (".gz" if gz else "")), payload))
    assert "truncated" in message and "3x4x4" in message and "48" in message and "43" in message


def test_trailing_bytes(tmp_path: Path) -> None:
    payload = idx_bytes(np.zeros((3, 4, 4), np.uint8)) + b"\x00\x01"
    message = error_for(write(tmp_path / "t", payload))
    assert "2 trailing bytes" in message


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda z: z[: len(z) // 2], id="truncated-stream"),
        pytest.param(lambda z: z[:-8] + bytes(8), id="bad-crc-and-size"),
        pytest.param(lambda z: z[:10] + bytes(len(z) - 10), id="garbage-deflate"),
    ],
)
def test_corrupt_gzip(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    compressed = gzip.compress(idx_bytes(rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(compressed))
    assert "gzip" in error_for(path)


def test_gz_suffix_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    assert "not a gzip file" in error_for(path)


def test_unreadable_path(tmp_path: Path) -> None:
    assert "cannot read" in error_for(tmp_path / "does-not-exist")


# --- loading an IDX dataset --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_dataset_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dataset(tmp_path / "d", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "d")
    assert ds.name == "fashion-mnist"
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    np.testing.assert_allclose(ds.train_x[:, 0].numpy() * 255.0, arrays["train_images"], atol=1e-4)
    np.testing.assert_allclose(ds.test_x[:, 0].numpy() * 255.0, arrays["test_images"], atol=1e-4)
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_labels"])
    assert ds.classes[:2] == ("T-shirt/top", "Trouser") and ds.classes[-1] == "Ankle boot"
    assert ds.num_classes == 10
    assert ds.source == str(tmp_path / "d")


def test_mnist_has_digit_classes(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.classes == tuple("0123456789")


def test_mixed_gz_and_plain_files(tmp_path: Path) -> None:
    arrays = make_idx_dataset(tmp_path, gz=True)
    plain = tmp_path / FILES["test_labels"]
    plain.write_bytes(idx_bytes(arrays["test_labels"]))
    (tmp_path / (FILES["test_labels"] + ".gz")).unlink()
    ds = load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["test_labels"])


def load_error(directory: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=directory)
    return str(info.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / FILES["train_labels"]
    write(path, idx_bytes(np.array([0, 1, 2, 10, 3, 4], np.uint8)))
    message = load_error(tmp_path)
    assert str(path) in message and "label 10" in message and "index 3" in message and "0..9" in message


def test_label_count_mismatch(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, n_test=4)
    path = tmp_path / (FILES["test_labels"] + ".gz")
    write(path, idx_bytes(np.zeros(3, np.uint8)))
    message = load_error(tmp_path)
    assert message == f"{path}: expected 4 labels to match the images, found 3"


def test_labels_must_be_ubyte(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    path = tmp_path / (FILES["train_labels"] + ".gz")
    write(path, idx_bytes(np.zeros(6, np.int32)))
    message = load_error(tmp_path)
    assert str(path) in message and "uint8" in message


def test_images_must_be_3d_and_28x28(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    path = tmp_path / (FILES["train_images"] + ".gz")
    write(path, idx_bytes(np.zeros((6, 784), np.uint8)))
    assert str(path) in load_error(tmp_path)
    write(path, idx_bytes(np.zeros((6, 32, 32), np.uint8)))
    message = load_error(tmp_path)
    assert str(path) in message and "28x28" in message and "32x32" in message


# --- where datasets are looked for ------------------------------------------------------------------


def n_train_loaded(**kwargs: object) -> int:
    return len(load_dataset("fashion-mnist", **kwargs).train_y)  # type: ignore[arg-type]


def test_lookup_order(tmp_path: Path, isolated_lookup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # three copies told apart by their size: data_dir 3, $SPARANK_DATA 4, system 5 training images
    make_idx_dataset(tmp_path / "explicit", n_train=3)
    make_idx_dataset(tmp_path / "env" / "fashion-mnist", n_train=4)  # a parent holding <name>/
    make_idx_dataset(isolated_lookup / "fashion-mnist", n_train=5)
    assert n_train_loaded() == 5
    monkeypatch.setenv("SPARANK_DATA", str(tmp_path / "env"))
    assert n_train_loaded() == 4
    assert n_train_loaded(data_dir=tmp_path / "explicit") == 3
    assert n_train_loaded(data_dir=str(tmp_path / "explicit")) == 3
    # a data_dir without the dataset is an error, never a silent fall-back to $SPARANK_DATA or the system copy
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"--data-dir is the only place looked"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "empty")
    # and an empty $SPARANK_DATA does not fall back to the system copy either
    (tmp_path / "empty-env").mkdir()
    monkeypatch.setenv("SPARANK_DATA", str(tmp_path / "empty-env"))
    with pytest.raises(DatasetError, match=r"\$SPARANK_DATA is the only place looked"):
        load_dataset("fashion-mnist")


def test_the_files_read_are_recorded(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "d", n_train=3)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "d")
    assert len(ds.files) == 4 and all(Path(f).is_absolute() and Path(f).is_file() for f in ds.files)
    assert {Path(f).parent for f in ds.files} == {Path(ds.source)}
    digits = load_dataset("digits")
    assert digits.source.startswith("scikit-learn ") and digits.files[0].endswith("digits.csv.gz") and Path(digits.files[0]).is_file()


def test_a_relative_data_dir_is_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dataset(tmp_path / "d", n_train=3)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("fashion-mnist", data_dir="d").source == str(tmp_path.resolve() / "d")


def test_name_subdirectory_beats_files_in_the_root(tmp_path: Path) -> None:
    # MNIST and Fashion-MNIST share file names: <root>/<name>/ is tried first
    make_idx_dataset(tmp_path / "root", n_train=3)
    make_idx_dataset(tmp_path / "root" / "fashion-mnist", n_train=7)
    assert n_train_loaded(data_dir=tmp_path / "root") == 7
    assert find_dataset_dir("mnist", data_dir=tmp_path / "root") == tmp_path / "root"


def test_env_directory_holding_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dataset(tmp_path / "files", n_train=2)
    monkeypatch.setenv("SPARANK_DATA", str(tmp_path / "files"))
    assert n_train_loaded() == 2


def test_missing_dataset_lists_every_place(tmp_path: Path, isolated_lookup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("SPARANK_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    message = str(info.value)
    places = [tmp_path / "mine" / "fashion-mnist", tmp_path / "mine"]
    positions = [message.index(f"{p} (") for p in places]
    assert positions == sorted(positions)  # in the order they are searched
    assert f"{tmp_path / 'env'} (" not in message  # only the directory named is searched
    for fix in ("apt-get install dataset-fashion-mnist", "--data-dir", "SPARANK_DATA", "t10k-labels-idx1-ubyte.gz"):
        assert fix in message
    assert "\n" not in message


def test_missing_mnist_says_where_to_download(isolated_lookup: Path) -> None:
    with pytest.raises(DatasetError, match=r"mnist not found.*https://.*--data-dir") as info:
        load_dataset("mnist")
    assert str(isolated_lookup / "mnist") in str(info.value)


def test_partial_directory_is_an_error(tmp_path: Path, isolated_lookup: Path) -> None:
    make_idx_dataset(isolated_lookup / "fashion-mnist")  # a good copy later in the order is not used silently
    make_idx_dataset(tmp_path / "partial")
    (tmp_path / "partial" / (FILES["test_images"] + ".gz")).unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path / "partial")
    message = str(info.value)
    assert str(tmp_path / "partial") in message and "t10k-images-idx3-ubyte" in message


def test_data_dir_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="--data-dir.*not a directory"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "typo")
    monkeypatch.setenv("SPARANK_DATA", str(tmp_path / "typo"))
    with pytest.raises(DatasetError, match=r"\$SPARANK_DATA.*not a directory"):
        load_dataset("fashion-mnist")


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "cifar10" in message
    assert all(name in message for name in DATASETS)
    assert isinstance(info.value, ValueError)


def test_name_spelling_is_forgiving(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    assert load_dataset("Fashion_MNIST", data_dir=tmp_path).name == "fashion-mnist"


# --- digits ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return load_digits()


def test_digits(digits: data.Dataset) -> None:
    assert load_dataset("digits").name == "digits"
    n_train, n_test = len(digits.train_y), len(digits.test_y)
    assert n_train + n_test == 1797 and n_test == 450  # ceil(0.25 * 1797)
    assert digits.train_x.shape == (n_train, 1, 8, 8) and digits.test_x.shape == (n_test, 1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    for x in (digits.train_x, digits.test_x):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(digits.train_y.tolist()) == set(range(10)) == set(digits.test_y.tolist())
    # stratified: every class has ~25 % of its images in the test split
    for k in range(10):
        total = int((digits.train_y == k).sum() + (digits.test_y == k).sum())
        assert abs(int((digits.test_y == k).sum()) - 0.25 * total) <= 1


def test_digits_split_is_fixed(digits: data.Dataset) -> None:
    again = load_digits()
    assert torch.equal(digits.train_x, again.train_x) and torch.equal(digits.test_y, again.test_y)


# --- the evaluation subset ---------------------------------------------------------------------------


def test_eval_subset_first_n(digits: data.Dataset) -> None:
    idx, x, y = eval_subset(digits, 7)
    assert idx.tolist() == list(range(7)) and idx.dtype == torch.int64
    assert torch.equal(x, digits.test_x[:7]) and torch.equal(y, digits.test_y[:7])


def test_eval_subset_all(digits: data.Dataset) -> None:
    idx, x, y = eval_subset(digits, None)
    assert len(idx) == len(digits.test_y)
    assert torch.equal(x, digits.test_x) and torch.equal(y, digits.test_y)


def test_eval_subset_seeded(digits: data.Dataset) -> None:
    idx, x, y = eval_subset(digits, 50, seed=3)
    again, _, _ = eval_subset(digits, 50, seed=3)
    other, _, _ = eval_subset(digits, 50, seed=4)
    assert torch.equal(idx, again) and not torch.equal(idx, other)
    assert len(set(idx.tolist())) == 50 and idx.tolist() == sorted(idx.tolist())
    assert 0 <= int(idx.min()) and int(idx.max()) < len(digits.test_y)
    assert torch.equal(x, digits.test_x[idx]) and torch.equal(y, digits.test_y[idx])
    # the documented recipe, so a study can be reproduced without sparank
    expected = np.sort(np.random.default_rng(3).choice(len(digits.test_y), size=50, replace=False))
    assert idx.tolist() == expected.tolist()
    # n equal to the test set with a seed is a permutation, sorted: every index once
    full, _, _ = eval_subset(digits, len(digits.test_y), seed=0)
    assert full.tolist() == list(range(len(digits.test_y)))


@pytest.mark.parametrize("seed", [-1, 2.5, True, "0"])
def test_eval_subset_bad_seed(digits: data.Dataset, seed: object) -> None:
    with pytest.raises(DatasetError, match=r"seed must be a non-negative integer"):
        eval_subset(digits, 10, seed=seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, -1, 451, 2.5, True])
def test_eval_subset_bad_n(digits: data.Dataset, n: object) -> None:
    with pytest.raises(DatasetError, match=r"n must be an integer between 1 and 450.*n=None"):
        eval_subset(digits, n)  # type: ignore[arg-type]


# --- the real Fashion-MNIST, when the Debian package is installed --------------------------------------

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", REAL_FASHION.parent)
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(REAL_FASHION)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.test_y.dtype == torch.int64
    assert float(ds.train_x.min()) == 0.0 and float(ds.train_x.max()) == 1.0
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
