"""Loaders for the real datasets from a directory the user names: CIFAR-10/100 and MNIST. No downloads.

* CIFAR-10 / CIFAR-100: the standard "python version" pickle batches (``data_batch_1`` ..
  ``data_batch_5`` and ``test_batch``; ``train`` and ``test`` for CIFAR-100), each a dict with
  ``b"data"`` (N, 3072) uint8 in channel-major order and ``b"labels"`` (``b"fine_labels"`` and
  ``b"coarse_labels"`` for CIFAR-100). Looked up in ``DIR/cifar-10-batches-py`` (``DIR/cifar-100-python``)
  or in ``DIR`` itself.
* MNIST: the standard IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (or the same names with ``.gz``), in
  ``DIR/mnist``, ``DIR/MNIST/raw`` or ``DIR``.

:func:`mnist_on_cifar10` composes MNIST-on-CIFAR-10 as an :class:`~simulations.data.images.ImageBank`:
every CIFAR-10 image (class = its label) with an MNIST digit pasted at its centre at contrast s by
:func:`simulations.data.images.render`; the pretraining and probe-training sets use the training
splits, the probe's test set the test splits of both datasets. The standard CIFAR augmentation
(random 32 x 32 crop of the image padded by 4 pixels, horizontal flip) acts on the photo.

A missing or malformed file raises one ValueError naming its path.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

CIFAR10_DIRS = ("cifar-10-batches-py", ".")
CIFAR100_DIRS = ("cifar-100-python", ".")
MNIST_DIRS = ("mnist", "MNIST/raw", ".")
#: Padding (pixels, reflected) of the standard CIFAR random-crop augmentation.
CIFAR_PAD = 4


def _find(directory: Path, subdirs, name: str) -> Path:
    for sub in subdirs:
        for candidate in (directory / sub / name, directory / sub / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ValueError(f"data_dir: {directory / subdirs[0] / name} does not exist (looked in "
                     f"{', '.join(str(directory / sub) for sub in subdirs)})")


def _directory(data_dir) -> Path:
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise ValueError(f"data_dir: {directory} is not a directory")
    return directory


def read_cifar_batch(path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch: (images (N, 32, 32, 3) uint8, labels (N,) int32)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key.encode()], dtype=np.int32)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except FileNotFoundError:
        raise ValueError(f"data_dir: {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 -- any unpickling or shape failure means a malformed file
        raise ValueError(f"data_dir: {path} is not a CIFAR python batch ({type(error).__name__}: {error})") from None
    if labels.shape != (images.shape[0],):
        raise ValueError(f"data_dir: {path} is not a CIFAR python batch ({labels.shape[0]} labels for "
                         f"{images.shape[0]} images)")
    return images, labels


def load_cifar10(data_dir) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images (50000, 32, 32, 3) uint8, labels), (test images, labels)) from ``data_dir``."""
    directory = _directory(data_dir)
    train = [read_cifar_batch(_find(directory, CIFAR10_DIRS, f"data_batch_{i}")) for i in range(1, 6)]
    test = read_cifar_batch(_find(directory, CIFAR10_DIRS, "test_batch"))
    return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])), test


def load_cifar100(data_dir, *, label: str = "fine") -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """CIFAR-100 train and test (images, labels); ``label`` is "fine" (100 classes) or "coarse" (20)."""
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    directory = _directory(data_dir)
    return tuple(read_cifar_batch(_find(directory, CIFAR100_DIRS, split), f"{label}_labels")
                 for split in ("train", "test"))


def read_idx(path) -> np.ndarray:
    """One IDX file (optionally gzipped) of unsigned bytes: images (N, rows, cols) or labels (N,), uint8."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"data_dir: {path} does not exist") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise ValueError(f"data_dir: {path} is not a readable IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise ValueError(f"data_dir: {path} is not an IDX file of unsigned bytes (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)) if len(raw) >= header else ()
    if len(shape) != ndim or len(raw) != header + int(np.prod(shape)):
        raise ValueError(f"data_dir: {path} is truncated or malformed (header says shape {shape}, "
                         f"file holds {len(raw) - min(header, len(raw))} data bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(data_dir) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images (60000, 28, 28) uint8, labels), (test images, labels)) from ``data_dir``."""
    directory = _directory(data_dir)
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(directory, MNIST_DIRS, f"{prefix}-images-idx3-ubyte"))
        labels_path = _find(directory, MNIST_DIRS, f"{prefix}-labels-idx1-ubyte")
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(f"data_dir: {labels_path} holds {labels.shape} labels for images of shape {images.shape}")
        splits.append((images, labels.astype(np.int32)))
    return splits[0], splits[1]


def mnist_on_cifar10(data_dir, *, digit_size: int = 16):
    """MNIST-on-CIFAR-10 as an ImageBank (CIFAR images reflect-padded by CIFAR_PAD, digits resized to digit_size)."""
    import jax.numpy as jnp

    from simulations.data.images import ImageBank, resize_digits

    (train_x, train_y), (test_x, test_y) = load_cifar10(data_dir)
    (digit_x, digit_y), (test_digit_x, test_digit_y) = load_mnist(data_dir)
    pad = ((0, 0), (CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0))

    def images(x):  # uint8 (a quarter of float32's memory); render converts each crop
        return jnp.asarray(np.pad(x, pad, mode="reflect"))

    def digits(x):
        return jnp.asarray(resize_digits(x.astype(np.float32) / 255.0, digit_size))

    return ImageBank(images(train_x), jnp.asarray(train_y), images(test_x), jnp.asarray(test_y), digits(digit_x),
                     jnp.asarray(digit_y), digits(test_digit_x), jnp.asarray(test_digit_y), 32 + 2 * CIFAR_PAD,
                     int(max(train_y.max(), test_y.max())) + 1)


def image_bank(data_dir=None, *, image_size: int, digit_size: int):
    """The bundled offline bank (data_dir None) or MNIST-on-CIFAR-10 from ``data_dir``."""
    from simulations.data import images

    if data_dir is None:
        return images.bundled_bank(patch=image_size + images.CROP_JITTER, digit_size=digit_size)
    return mnist_on_cifar10(data_dir, digit_size=digit_size)
