"""Datasets: scikit-learn's digits (always there), Fashion-MNIST and MNIST from IDX files.

Every dataset is returned as a :class:`Dataset` of float32 images shaped
``(N, 1, H, W)`` with pixels in ``[0, 1]`` and int64 labels in ``[0, K)``.

- ``digits``: scikit-learn's 8x8 digits, a fixed stratified 75/25 split.
- ``fashion-mnist`` (Xiao et al. 2017, https://arxiv.org/abs/1708.07747) and
  ``mnist`` (LeCun et al. 1998, http://yann.lecun.com/exdb/mnist/): the four
  IDX files of the official 60000/10000 split, gzipped or not, read and
  validated by :func:`read_idx`. :func:`find_dataset_dir` says where they are
  looked for.

:func:`eval_subset` picks the fixed evaluation inputs of a study from the
test split; its indices are what the store records with every result.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "fashion-mnist", "mnist")

#: digits has no official split: a fixed stratified 75/25 split with this seed
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25

#: where system packages put datasets (Debian's ``dataset-fashion-mnist``: ``<root>/fashion-mnist/``)
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
#: environment variable naming a directory with the IDX files, or a parent of ``<name>/``
DATA_ENV_VAR = "SPARANK_DATA"

#: the four IDX files of an MNIST-format dataset; each may also be gzipped (``<name>.gz``)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: what an IDX dataset looks like and how to get it
_IDX_DATASETS: dict[str, dict[str, object]] = {
    "fashion-mnist": {
        "classes": FASHION_MNIST_CLASSES,
        "image_shape": (28, 28),
        "how_to_get": (
            "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four files "
            "from https://github.com/zalandoresearch/fashion-mnist#get-the-data"
        ),
    },
    "mnist": {
        "classes": tuple(str(k) for k in range(10)),
        "image_shape": (28, 28),
        "how_to_get": "download the four files from https://ossci-datasets.s3.amazonaws.com/mnist/",
    },
}

#: IDX data type codes (third byte of the magic number) -> big-endian numpy dtype
IDX_DTYPES = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}


class DatasetError(ValueError):
    """A dataset is unknown, missing, or one of its files is malformed; the message says which and why."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images in ``[0, 1]`` with integer labels."""

    name: str
    train_x: Tensor  # (N_train, 1, H, W) float32 in [0, 1]
    train_y: Tensor  # (N_train,) int64 in [0, num_classes)
    test_x: Tensor  # (N_test, 1, H, W)
    test_y: Tensor  # (N_test,)
    classes: tuple[str, ...]
    source: str = ""  # where the data came from: an absolute directory, or "scikit-learn <version>"
    files: tuple[str, ...] = ()  # the absolute paths of the files read (stored with every run and measurement)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), scaled to [0, 1], fixed stratified split."""
    import sklearn
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y)
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(x_tr),
        train_y=torch.from_numpy(y_tr),
        test_x=torch.from_numpy(x_te),
        test_y=torch.from_numpy(y_te),
        classes=tuple(str(k) for k in range(10)),
        source=f"scikit-learn {sklearn.__version__}",
        files=(str(Path(sklearn.datasets.__file__).resolve().parent / "data" / "digits.csv.gz"),),
    )


def load_dataset(name: str, *, data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`).

    Args:
        name: ``"digits"``, ``"fashion-mnist"`` or ``"mnist"``.
        data_dir: where to look first for the IDX files (the CLI's ``--data-dir``):
            the directory holding them, or a parent with a ``<name>/`` subdirectory.
            An error for digits, which has no files to look for. See
            :func:`find_dataset_dir` for the full search.

    Returns:
        A :class:`Dataset`: float32 images ``(N, 1, H, W)`` in ``[0, 1]``, int64 labels.

    Raises:
        DatasetError: unknown name, files not found (the message lists every place
            looked and how to get them), or a malformed file (the message names it).
    """
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        if data_dir is not None:
            raise DatasetError(
                f"--data-dir {data_dir} is not used for digits: it ships with scikit-learn; "
                "drop --data-dir, or name an IDX dataset (fashion-mnist, mnist)"
            )
        return load_digits()
    if key not in _IDX_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    directory = find_dataset_dir(key, data_dir=data_dir)
    return _load_idx_dataset(key, directory)


def find_dataset_dir(name: str, *, data_dir: str | Path | None = None) -> Path:
    """The directory holding the four IDX files of ``name``.

    One place is looked in, the first of these that is named:

    1. ``data_dir``, if given: ``data_dir/<name>/``, then ``data_dir`` itself;
    2. else ``$SPARANK_DATA``, if set: ``$SPARANK_DATA/<name>/``, then ``$SPARANK_DATA`` itself;
    3. else :data:`SYSTEM_DATA_ROOT` ``/<name>/`` (where ``apt-get install dataset-fashion-mnist`` puts them).

    A directory you name that lacks the files is an error, never a silent
    fall-back to another copy. The ``<name>/`` subdirectory is tried first
    because MNIST and Fashion-MNIST use the same file names: a directory
    holding the files directly must hold only the dataset asked for.

    Returns:
        The directory, absolute.

    Raises:
        DatasetError: ``data_dir`` or ``$SPARANK_DATA`` is not a directory; a
            directory holds some of the four files but not all; or the place
            looked in has none (the message says where and how to get the files).
    """
    if name not in _IDX_DATASETS:
        raise DatasetError(f"unknown IDX dataset {name!r}: choose one of {', '.join(_IDX_DATASETS)}")
    candidates: list[tuple[Path, str]] = []
    env_value = os.environ.get(DATA_ENV_VAR, "")
    for root, origin, fix in (
        (data_dir, "--data-dir", "pass an existing directory as --data-dir (data_dir in Python)"),
        (env_value or None, f"${DATA_ENV_VAR}", f"set {DATA_ENV_VAR} to an existing directory, or unset it"),
    ):
        if root is None:
            continue
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{origin} {str(root)!r} is not a directory: {fix}")
        candidates += [(root / name, origin), (root, origin)]
        break  # the first place named is the only place looked
    if not candidates:
        candidates.append((SYSTEM_DATA_ROOT / name, "system"))

    for directory, origin in candidates:
        present = {key: _idx_file(directory, base) for key, base in IDX_FILES.items()}
        found = [key for key, path in present.items() if path is not None]
        if len(found) == len(IDX_FILES):
            return directory.resolve()
        if found:
            missing = ", ".join(f"{IDX_FILES[k]}[.gz]" for k in IDX_FILES if k not in found)
            raise DatasetError(f"{directory} ({origin}) holds some {name} IDX files but lacks {missing}: add the missing files")

    looked = "; ".join(f"{d} ({origin})" for d, origin in candidates)
    files = ", ".join(f"{base}.gz" for base in IDX_FILES.values())
    how = str(_IDX_DATASETS[name]["how_to_get"])
    origin = candidates[0][1]
    other = (
        f"; {origin} is the only place looked when given: put the files there, or leave it out to use "
        f"${DATA_ENV_VAR} or {SYSTEM_DATA_ROOT / name}"
        if origin != "system"
        else ""
    )
    raise DatasetError(
        f"{name} not found; looked in: {looked}{other}. To get it, {how} ({files}) into a directory "
        f"and pass --data-dir DIR or set {DATA_ENV_VAR}=DIR"
    )


def read_idx(path: str | Path, *, ndim: int | None = None, dtype: str | np.dtype | None = None) -> np.ndarray:
    """Read one IDX file (http://yann.lecun.com/exdb/mnist/, "file formats"), gzipped if its name ends in ``.gz``.

    The format: two zero bytes, a data type code (0x08 ubyte, 0x09 byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of
    dimensions, then each dimension as a big-endian uint32, then the data,
    big-endian, C order. The data length must match the dimensions exactly.

    Args:
        path: the file.
        ndim: if given, the number of dimensions the file must have.
        dtype: if given, the data type the file must have (e.g. ``"uint8"``).

    Returns:
        A writable array in native byte order, shaped as the header says.

    Raises:
        DatasetError: the file cannot be read, is not valid gzip, or breaks the
            format; the one-line message starts with the path and says why.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(raw)} bytes, need at least 4)")
    if raw[0] != 0 or raw[1] != 0:
        hint = "; it looks gzip-compressed: name it *.gz" if raw[:2] == b"\x1f\x8b" else ""
        raise DatasetError(f"{path}: bad magic number 0x{raw[:4].hex()}: an IDX file starts with two zero bytes{hint}")
    code, dims_count = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {d.name}" for c, d in IDX_DTYPES.items())
        raise DatasetError(f"{path}: unknown IDX data type code 0x{code:02X} (known: {known})")
    file_dtype = IDX_DTYPES[code].newbyteorder("=")
    if dims_count == 0:
        raise DatasetError(f"{path}: the header declares 0 dimensions")
    if ndim is not None and dims_count != ndim:
        raise DatasetError(f"{path}: expected {ndim} dimension(s), the header declares {dims_count}")
    if dtype is not None and file_dtype != np.dtype(dtype):
        raise DatasetError(f"{path}: expected {np.dtype(dtype).name} data, found type code 0x{code:02X} ({file_dtype.name})")
    header_len = 4 + 4 * dims_count
    if len(raw) < header_len:
        raise DatasetError(f"{path}: truncated header: {dims_count} dimensions need {header_len} header bytes, file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=dims_count, offset=4))
    expected = math.prod(shape) * file_dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        what = "truncated" if found < expected else f"{found - expected} trailing bytes"
        dims = "x".join(map(str, shape))
        raise DatasetError(f"{path}: {what}: the header declares {dims} {file_dtype.name} = {expected} data bytes, found {found}")
    data = np.frombuffer(raw, dtype=IDX_DTYPES[code], count=math.prod(shape), offset=header_len)
    return data.reshape(shape).astype(file_dtype)  # a copy: native byte order, writable


def eval_subset(data: Dataset, n: int | None, *, seed: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed evaluation inputs of a study, taken from the test split.

    Args:
        data: the dataset.
        n: how many test inputs; ``None`` means all of them.
        seed: ``None`` takes the first ``n`` test inputs; otherwise ``n`` distinct
            indices drawn with ``numpy.random.default_rng(seed)``, sorted.

    Returns:
        ``(indices, inputs, labels)``: int64 indices ``(n,)`` into the test split,
        inputs ``(n, 1, H, W)`` and labels ``(n,)``.

    Raises:
        DatasetError: ``n`` is not between 1 and the test-set size, or ``seed``
            is not a non-negative integer.
    """
    total = len(data.test_y)
    if n is None:
        n = total
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
        raise DatasetError(
            f"n must be an integer between 1 and {total} (the {data.name} test set size), got {n!r}; use a smaller n, or n=None for all"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise DatasetError(f"seed must be a non-negative integer or None (the first n inputs), got {seed!r}")
    if seed is None:
        indices = np.arange(n, dtype=np.int64)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(total, size=int(n), replace=False)).astype(np.int64)
    index = torch.from_numpy(indices)
    return index, data.test_x[index], data.test_y[index]


def _idx_file(directory: Path, base: str) -> Path | None:
    """``directory/base`` or ``directory/base.gz`` (uncompressed first), or None."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix != ".gz":
        return raw
    if raw[:2] != b"\x1f\x8b":
        raise DatasetError(f"{path}: not a gzip file (starts with 0x{raw[:2].hex()}, gzip starts with 0x1f8b): re-download it or drop the .gz suffix")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(f"{path}: corrupt gzip data ({reason}): re-download the file") from exc


def _load_idx_dataset(name: str, directory: Path) -> Dataset:
    spec = _IDX_DATASETS[name]
    classes: tuple[str, ...] = spec["classes"]  # type: ignore[assignment]
    image_shape: tuple[int, int] = spec["image_shape"]  # type: ignore[assignment]
    split: dict[str, tuple[Tensor, Tensor]] = {}
    for part in ("train", "test"):
        images_path = _idx_file(directory, IDX_FILES[f"{part}_images"])
        labels_path = _idx_file(directory, IDX_FILES[f"{part}_labels"])
        if images_path is None or labels_path is None:  # removed since find_dataset_dir looked
            raise DatasetError(f"{directory}: the {part} IDX files disappeared while loading {name}")
        images = read_idx(images_path, ndim=3, dtype="uint8")
        labels = read_idx(labels_path, ndim=1, dtype="uint8")
        if images.shape[1:] != image_shape:
            found = "x".join(map(str, images.shape[1:]))
            raise DatasetError(f"{images_path}: expected {image_shape[0]}x{image_shape[1]} images, found {found}")
        if len(labels) != len(images):
            raise DatasetError(f"{labels_path}: expected {len(images)} labels to match the images, found {len(labels)}")
        if len(labels) and labels.max() >= len(classes):
            bad = int(np.argmax(labels >= len(classes)))
            raise DatasetError(f"{labels_path}: label {labels[bad]} at index {bad} is out of range 0..{len(classes) - 1}")
        x = images.astype(np.float32)[:, None, :, :]
        x /= 255.0
        split[part] = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=name,
        train_x=split["train"][0],
        train_y=split["train"][1],
        test_x=split["test"][0],
        test_y=split["test"][1],
        classes=classes,
        source=str(directory),
        files=tuple(str(_idx_file(directory, IDX_FILES[k]).resolve()) for k in IDX_FILES),  # type: ignore[union-attr]
    )
