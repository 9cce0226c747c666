"""Digits on photos: the paper's digit-on-photo data, offline, with its augmentations in JAX.

A sample is a patch of a photo with a handwritten digit pasted at its centre. The photo's class is
the first (coarse) feature; the digit is the second feature, with a strength s in [0, 1] that sets
its contrast: a view is ``(1 - s m) * photo + s m`` with m the digit's ink in [0, 1] (s = 1: an
opaque white digit, s = 0: no digit). Each contrastive view takes a random crop of the sample's
patch and a random horizontal flip of the photo, and drops the digit with probability p_drop
(independently per view); the digit itself is never cropped or flipped.

Two sources fill the same :class:`ImageBank`:

* :func:`bundled_bank` (the offline default): scikit-learn's 1,797 bundled 8x8 digits, upsampled,
  on ten colour photos that ship inside the scikit-learn and scikit-image wheels (class = photo;
  samples are random patches of it). Nothing is fetched; the files are read from the installed
  packages at run time.
* :func:`simulations.data.datasets.mnist_on_cifar10` (real data from a directory): MNIST digits on
  CIFAR-10 images (class = the CIFAR label).

Every array is float32 (images in [0, 1]) and every draw is a pure function of a JAX key.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simulations import draws

#: The bundled colour photos (package, loader name) used as classes, in class order.
PHOTOS = (("sklearn", "china.jpg"), ("sklearn", "flower.jpg"), ("skimage", "astronaut"), ("skimage", "chelsea"),
          ("skimage", "coffee"), ("skimage", "rocket"), ("skimage", "hubble_deep_field"), ("skimage", "retina"),
          ("skimage", "immunohistochemistry"), ("skimage", "stereo_motorcycle"))
#: Side (pixels) the bundled photos are resized to, and the crop jitter: a sample's patch is this
#: many pixels wider than a view, so a view's random crop moves the photo by up to this much.
PHOTO_SIZE, CROP_JITTER = 64, 8
#: Bundled digits 0 .. TRAIN_DIGITS-1 serve pretraining and the probe's training set; the rest are
#: held out for the probe's test set.
TRAIN_DIGITS = 1200


@functools.partial(jax.tree_util.register_dataclass, data_fields=["images", "labels", "test_images", "test_labels",
                   "digits", "digit_labels", "test_digits", "test_digit_labels"], meta_fields=["patch", "num_classes"])
@dataclasses.dataclass(frozen=True)
class ImageBank:
    """Sources of samples: photos (or dataset images) with labels, and digits, each with a held-out split.

    A pytree whose arrays are leaves and whose ``patch`` and ``num_classes`` are static, so a bank
    passes through ``jax.jit`` as an argument.

    Attributes:
        images, test_images: (M, H, W, 3) float32 in [0, 1] (or uint8 in [0, 255]); a sample is a
            ``patch`` x ``patch`` window of one of them (train for pretraining and the probe's
            training set, test for the probe's test set).
        labels, test_labels: (M,) int32 class of each image (the photo class).
        digits, test_digits: (D, q, q) float32 ink in [0, 1], already at the pasted size q.
        digit_labels, test_digit_labels: (D,) int32 digit classes 0-9.
        patch: side of a sample's window.
        num_classes: number of photo classes C (labels in [0, C)).
    """

    images: jax.Array
    labels: jax.Array
    test_images: jax.Array
    test_labels: jax.Array
    digits: jax.Array
    digit_labels: jax.Array
    test_digits: jax.Array
    test_digit_labels: jax.Array
    patch: int
    num_classes: int


def _square(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side, :3]


def load_photo(package: str, name: str) -> np.ndarray:
    """One bundled colour photo as uint8 (H, W, 3), read from the installed package (never fetched)."""
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)


def resize_photo(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of a uint8 (H, W, >=3) photo, box-filtered to (size, size, 3) float32 in [0, 1]."""
    from PIL import Image

    square = Image.fromarray(np.ascontiguousarray(_square(np.asarray(image, dtype=np.uint8))))
    return np.asarray(square.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def resize_digits(ink: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, anti-aliased resize of grey digits (N, h, w) in [0, 1] to (N, size, size) float32."""
    from skimage.transform import resize

    ink = np.asarray(ink, dtype=np.float64)
    return np.clip(resize(ink, (ink.shape[0], size, size), order=1, anti_aliasing=True), 0, 1).astype(np.float32)


def bundled_bank(*, photo_size: int = PHOTO_SIZE, patch: int = 32, digit_size: int = 16) -> ImageBank:
    """The offline bank: ten bundled photos (centre square, resized to photo_size) and bundled digits.

    The photos serve both splits (their class is the photo; probe samples are other patches of it);
    the digits are split into the first ``TRAIN_DIGITS`` and the held-out rest.
    """
    from sklearn.datasets import load_digits

    if not 0 < patch <= photo_size:
        raise ValueError(f"patch must be in [1, photo_size={photo_size}], got {patch}")
    photos = jnp.asarray(np.stack([resize_photo(load_photo(*source), photo_size) for source in PHOTOS]))
    labels = jnp.arange(len(PHOTOS), dtype=jnp.int32)
    digits = load_digits()
    ink = jnp.asarray(resize_digits(digits.images / 16.0, digit_size))
    targets = jnp.asarray(digits.target, dtype=jnp.int32)
    return ImageBank(photos, labels, photos, labels, ink[:TRAIN_DIGITS], targets[:TRAIN_DIGITS],
                     ink[TRAIN_DIGITS:], targets[TRAIN_DIGITS:], patch, len(PHOTOS))


# ----------------------------------------------------------------------------------------------
# Drawing samples and views (pure JAX; jit/vmap friendly)


class Samples(NamedTuple):
    """A batch of samples before augmentation: which image, where, and which digit.

    Attributes:
        image, digit: (n,) indices into the bank's images and digits (of one split).
        corner: (n, 2) top-left corner of each sample's patch in its image.
        label, digit_label: (n,) the photo class and the digit class.
    """

    image: jax.Array
    corner: jax.Array
    digit: jax.Array
    label: jax.Array
    digit_label: jax.Array


def _uniform_index(u, count):
    """Integers uniform in [0, count) from uniforms u in [0, 1) (count may be an array)."""
    return jnp.minimum(jnp.floor(u * count).astype(jnp.int32), count - 1)


def _pick_of_class(u, labels, classes, num_classes):
    """A uniformly random member (from uniforms u) of each requested class: indices into ``labels``."""
    counts = jnp.bincount(labels, length=num_classes)
    starts = jnp.cumsum(counts) - counts
    return jnp.argsort(labels, stable=True)[starts[classes] + _uniform_index(u, counts[classes])]


def draw_samples(bank: ImageBank, key: jax.Array, n: int, *, test: bool = False, balanced: bool = False) -> Samples:
    """n samples of one split; ``balanced`` makes photo and digit classes exactly balanced (probe sets).

    Balanced: sample i has class i mod C and digit class (i div C) mod 10 (then shuffled), so every
    class pair appears equally often when n is a multiple of 10 C; its image and digit are drawn
    uniformly within their class. Otherwise images and digits are drawn uniformly.
    """
    images, labels = (bank.test_images, bank.test_labels) if test else (bank.images, bank.labels)
    digit_labels = bank.test_digit_labels if test else bank.digit_labels
    # One draw of uniforms for every choice (few random-bit kernels keep compilation short).
    u = jax.random.uniform(key, (5, n), jnp.float32)
    if balanced:
        index = jnp.argsort(u[4])  # a uniformly random permutation
        classes, digit_classes = index % bank.num_classes, (index // bank.num_classes) % 10
        image = _pick_of_class(u[0], labels, classes, bank.num_classes)
        digit = _pick_of_class(u[1], digit_labels, digit_classes, 10)
    else:
        image, digit = _uniform_index(u[0], labels.shape[0]), _uniform_index(u[1], digit_labels.shape[0])
    corner = _uniform_index(u[2:4].T, images.shape[1] - bank.patch + 1)
    return Samples(image, corner, digit, labels[image], digit_labels[digit])


def _compose(photo, ink, keep, strength):
    """Paste the digit ink (q, q) at the centre of a (S, S, 3) photo crop with contrast strength."""
    size, q = photo.shape[0], ink.shape[0]
    top = (size - q) // 2
    alpha = jnp.pad(ink, ((top, size - q - top), (top, size - q - top))) * (strength * keep)
    return photo * (1.0 - alpha[..., None]) + alpha[..., None]


def render(bank: ImageBank, samples: Samples, key: jax.Array | None, *, image_size: int, p_drop, strength,
           test: bool = False) -> jax.Array:
    """Images (n, image_size, image_size, 3) of samples: one augmented view each, or un-augmented.

    With ``key`` None: the centre crop of each patch, no flip, digit present (probe images).
    Otherwise: a uniformly random crop of the patch, a horizontal flip with probability 1/2, and the
    digit dropped with probability ``p_drop``. ``p_drop`` and ``strength`` may be traced scalars.
    """
    images = bank.test_images if test else bank.images
    digits = bank.test_digits if test else bank.digits
    n, room = samples.image.shape[0], bank.patch - image_size
    if key is None:
        offset = jnp.full((n, 2), room // 2, samples.corner.dtype)
        flip, keep = jnp.zeros((n,), bool), jnp.ones((n,), jnp.float32)
    else:
        u = jax.random.uniform(key, (4, n), jnp.float32)
        offset = _uniform_index(u[:2].T, room + 1)
        flip, keep = u[2] < 0.5, (u[3] >= p_drop).astype(jnp.float32)

    def one(image, corner, off, flipped, ink, kept):
        start = corner + off
        crop = jax.lax.dynamic_slice(images[image], (start[0], start[1], jnp.zeros((), start.dtype)),
                                     (image_size, image_size, 3))
        crop = crop.astype(jnp.float32) / 255.0 if crop.dtype == jnp.uint8 else crop
        crop = jnp.where(flipped, crop[:, ::-1], crop)
        return _compose(crop, ink, kept, jnp.asarray(strength, crop.dtype))

    return jax.vmap(one)(samples.image, samples.corner, offset, flip, digits[samples.digit], keep)


def view_pairs(bank: ImageBank, key: jax.Array, n: int, *, image_size: int, p_drop, strength):
    """Two augmented views of n fresh training samples: (x, x_pos), each (n, image_size, image_size, 3)."""
    k_samples, k_first, k_second = draws.split(key, 3)
    samples = draw_samples(bank, k_samples, n)
    first = render(bank, samples, k_first, image_size=image_size, p_drop=p_drop, strength=strength)
    second = render(bank, samples, k_second, image_size=image_size, p_drop=p_drop, strength=strength)
    return first, second


def probe_images(bank: ImageBank, key: jax.Array, n: int, *, image_size: int, strength, test: bool):
    """Balanced un-augmented images of one split: (images (n, S, S, 3), photo labels (n,), digit labels (n,))."""
    samples = draw_samples(bank, key, n, test=test, balanced=True)
    images = render(bank, samples, None, image_size=image_size, p_drop=0.0, strength=strength, test=test)
    return images, samples.label, samples.digit_label
