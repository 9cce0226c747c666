"""Digits on photos: data composition, dataset loaders on written files, encoders, and the command.

Exact checks (the digit is pasted exactly as documented, or absent; balanced probe sets; same key
same images; loaders round-trip the standard file formats), error checks (a missing or malformed
file is one ValueError naming its path), and end-to-end runs: the command's JSON keys on the
offline data, and MNIST-on-CIFAR-10 from tiny written files.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simulations import contrastive
from simulations.data import datasets, images
from simulations.experiment import run
from simulations.experiments import pixels
from simulations.losses import info_nce_loss
from simulations.models import encoders, heads

REPO = Path(__file__).resolve().parents[1]
# Image arithmetic in float32 (pixels in [0, 1]): a few ulps.
FLOAT32_ATOL = 1e-6
# jit and eager evaluation of one float32 network may fuse and reassociate sums: relative 1e-5.
JIT_RTOL = 1e-5
# optax's NT-Xent and the library's InfoNCE are the same formula, evaluated in float64 here.
LOSS_ATOL = 1e-10
# Fraction of views keeping the digit at p_drop = 0.5 over N_VIEWS views: binomial std 0.5/sqrt(N)
# = 0.0078; 5 standard deviations.
N_VIEWS, KEEP_ATOL = 4096, 0.04
# A subprocess imports JAX and compiles the whole run (tens of seconds on 2 loaded cores).
TIMEOUT_S = 600
SIZE, DIGIT = 16, 12


@pytest.fixture(scope="module")
def bank():
    return images.bundled_bank(patch=SIZE + images.CROP_JITTER, digit_size=DIGIT)


def _views(bank, key, n, p_drop, strength):
    samples = images.draw_samples(bank, jax.random.PRNGKey(0), n)
    return samples, images.render(bank, samples, key, image_size=SIZE, p_drop=p_drop, strength=strength)


def test_digit_is_pasted_at_its_strength_or_dropped(bank):
    key, n, strength = jax.random.PRNGKey(1), 64, 0.7
    samples, bare = _views(bank, key, n, 0.0, 0.0)
    _, kept = _views(bank, key, n, 0.0, strength)
    _, dropped = _views(bank, key, n, 1.0, strength)
    np.testing.assert_allclose(dropped, bare, atol=FLOAT32_ATOL)  # p_drop = 1: the photo alone
    top = (SIZE - DIGIT) // 2
    alpha = np.zeros((n, SIZE, SIZE, 1), np.float32)
    alpha[:, top:top + DIGIT, top:top + DIGIT, 0] = strength * np.asarray(bank.digits)[np.asarray(samples.digit)]
    np.testing.assert_allclose(kept, (1 - alpha) * bare + alpha, atol=FLOAT32_ATOL)


def test_digit_is_dropped_with_probability_p_drop(bank):
    _, bare = _views(bank, jax.random.PRNGKey(2), N_VIEWS, 0.0, 0.0)
    _, views = _views(bank, jax.random.PRNGKey(2), N_VIEWS, 0.5, 1.0)
    has_digit = np.any(np.abs(np.asarray(views) - np.asarray(bare)) > FLOAT32_ATOL, axis=(1, 2, 3))
    assert abs(has_digit.mean() - 0.5) < KEEP_ATOL


def test_probe_sets_are_balanced_held_out_and_deterministic(bank):
    n = 10 * bank.num_classes * 3
    x, photo, digit = images.probe_images(bank, jax.random.PRNGKey(3), n, image_size=SIZE, strength=0.5, test=True)
    assert np.all(np.bincount(np.asarray(photo), minlength=bank.num_classes) == n // bank.num_classes)
    assert np.all(np.bincount(np.asarray(digit), minlength=10) == n // 10)
    pairs = np.bincount(np.asarray(photo) * 10 + np.asarray(digit), minlength=10 * bank.num_classes)
    assert np.all(pairs == 3)
    again = images.probe_images(bank, jax.random.PRNGKey(3), n, image_size=SIZE, strength=0.5, test=True)
    np.testing.assert_array_equal(x, again[0])
    assert bank.digits.shape[0] + bank.test_digits.shape[0] == 1797  # every bundled digit, split once
    np.testing.assert_array_equal(bank.images, images.bundled_bank(patch=SIZE + images.CROP_JITTER,
                                                                   digit_size=DIGIT).images)


def test_ntxent_is_the_library_infonce():
    z = jax.random.normal(jax.random.PRNGKey(4), (8, 5))
    z_pos = z + 0.3 * jax.random.normal(jax.random.PRNGKey(5), (8, 5))
    optax_loss = optax.losses.ntxent(jnp.concatenate([z, z_pos]), jnp.tile(jnp.arange(8), 2), 0.5)
    assert abs(float(optax_loss) - float(info_nce_loss(z, z_pos, 0.5))) < LOSS_ATOL


@pytest.mark.parametrize("encoder", encoders.ENCODERS)
def test_encoders_and_heads(encoder):
    params = encoders.init(jax.random.PRNGKey(6), encoder=encoder, image_size=SIZE, width=32, channels=4, rep_dim=8)
    x = jax.random.uniform(jax.random.PRNGKey(7), (5, SIZE, SIZE, 3), jnp.float32)
    for index, head in enumerate(encoders.HEADS):
        hidden, h, z = encoders.apply(params, x, head=head, kappa=1.5)
        assert h.shape == z.shape == (5, 8) and h.dtype == jnp.float32 and hidden.shape[0] == 5
        assert np.all(np.asarray(h) >= 0)  # h is taken after the last ReLU
        traced = jax.jit(lambda i: encoders.apply(params, x, head=i, kappa=1.5)[2])(index)
        np.testing.assert_allclose(traced, z, rtol=JIT_RTOL, atol=FLOAT32_ATOL)
    np.testing.assert_allclose(encoders.apply(params, x, head="fixed", kappa=1.5)[2],
                               h * heads.head_scales(1.5, 8)[None, :], atol=FLOAT32_ATOL)


def test_probes_read_a_planted_label():
    key = jax.random.PRNGKey(8)
    labels = jnp.arange(400) % 4
    features = jax.nn.one_hot(labels, 4) * 3.0 + 0.1 * jax.random.normal(key, (400, 4))
    assert float(contrastive.ridge_classifier_accuracy(features[:300], labels[:300], features[300:],
                                                       labels[300:], 4, 1e-3)) == 1.0
    assert float(contrastive.logistic_accuracy(features[:300], labels[:300], features[300:], labels[300:], 4)) == 1.0


# ----------------------------------------------------------------------------------------------
# Loaders on files written in the standard formats


def _write_cifar(directory: Path, per_batch: int = 10) -> dict:
    rng = np.random.default_rng(0)
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = list(np.arange(per_batch) % 10)
        with open(folder / name, "wb") as file:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, file)
        written[name] = (data, labels)
    return written


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(directory: Path, n: int = 10) -> dict:
    rng = np.random.default_rng(1)
    written = {}
    for prefix in ("train", "t10k"):
        pixels_, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(pixels_)))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
        written[prefix] = (pixels_, labels)
    return written


def test_cifar_and_mnist_loaders_round_trip(tmp_path):
    cifar, mnist = _write_cifar(tmp_path), _write_mnist(tmp_path)
    (train_x, train_y), (test_x, test_y) = datasets.load_cifar10(tmp_path)
    assert train_x.shape == (50, 32, 32, 3) and test_x.shape == (10, 32, 32, 3)
    data, labels = cifar["test_batch"]
    # Channel-major rows: the first 1024 bytes are the red plane, row by row.
    np.testing.assert_array_equal(test_x[3, :, :, 0].ravel(), data[3, :1024])
    np.testing.assert_array_equal(test_x[3, :, :, 2].ravel(), data[3, 2048:])
    np.testing.assert_array_equal(test_y, labels)
    (digits, digit_labels), (test_digits, _) = datasets.load_mnist(tmp_path)
    np.testing.assert_array_equal(digits, mnist["train"][0])
    np.testing.assert_array_equal(digit_labels, mnist["train"][1])
    assert test_digits.shape == (10, 28, 28)
    bank = datasets.mnist_on_cifar10(tmp_path, digit_size=DIGIT)
    assert bank.num_classes == 10 and bank.patch == 32 + 2 * datasets.CIFAR_PAD
    centre, photo, _ = images.probe_images(bank, jax.random.PRNGKey(0), 20, image_size=32, strength=0.0, test=True)
    index = np.asarray(images.draw_samples(bank, jax.random.PRNGKey(0), 20, test=True, balanced=True).image)
    np.testing.assert_allclose(centre, test_x[index] / 255.0, atol=FLOAT32_ATOL)  # centre crop = the image


def test_cifar100_loader(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as file:
            pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3, 4, 99],
                         b"coarse_labels": [0, 0, 1, 1, 2, 19]}, file)
    (_, fine), _ = datasets.load_cifar100(tmp_path)
    (_, coarse), _ = datasets.load_cifar100(tmp_path, label="coarse")
    assert list(fine) == [0, 1, 2, 3, 4, 99] and list(coarse) == [0, 0, 1, 1, 2, 19]


def test_missing_and_malformed_files_name_their_path(tmp_path):
    _write_cifar(tmp_path)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte does not exist"):
        datasets.load_mnist(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR python batch"):
        datasets.load_cifar10(tmp_path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(bytes([0, 0, 9, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(ValueError, match="bad-idx is not an IDX file"):
        datasets.read_idx(bad)
    truncated = tmp_path / "short-idx"
    truncated.write_bytes(_idx(np.zeros((4, 2, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match="short-idx is truncated"):
        datasets.read_idx(truncated)
    with pytest.raises(ValueError, match="data_dir"):
        pixels.load_bank(pixels.PixelsConfig.quick(data_dir=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("field, value", [("p_drop", 1.5), ("strength", -0.1), ("head", "deep"), ("kappa", 0.5),
                                          ("steps", 30), ("digit_size", 40), ("seeds", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        pixels.PixelsConfig.quick(**{field: value})


# ----------------------------------------------------------------------------------------------
# End to end


def test_mnist_on_cifar_end_to_end(tmp_path):
    _write_cifar(tmp_path)
    _write_mnist(tmp_path)
    config = pixels.PixelsConfig.quick(data_dir=str(tmp_path), image_size=24, steps=20, record_every=10,
                                       n_probe_train=100, n_probe_test=100)
    summary = pixels.report(run(pixels.EXPERIMENT, config), config)
    assert summary["data"] == "MNIST on CIFAR-10"
    for side in ("pre", "post"):
        assert len(summary[side]["digit_accuracy_seeds"]) == config.seeds
        assert 0.0 <= summary[side]["digit_accuracy"] <= 1.0
    assert np.isfinite(summary["diagnostics"]["final_loss"])


def test_command_json_keys(tmp_path):
    env = {**os.environ, "PROJECTION_HEAD_JAX_CACHE": str(tmp_path / "cache")}
    flags = ["--p-drop", "0.75", "--strength", "0.8", "--encoder", "mlp", "--head", "fixed", "--kappa", "1.2",
             "--loss", "spectral", "--seeds", "2", "--steps", "20", "--record-every", "10", "--seed", "3"]
    out = subprocess.run([sys.executable, "-m", "simulations", "pixels", "--quick", *flags, "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    for side in ("pre", "post"):
        for key in ("digit_accuracy", "photo_accuracy"):
            assert 0.0 <= summary[side][key] <= 1.0
        assert len(summary[side]["digit_accuracy_seeds"]) == 2
    diagnostics = summary["diagnostics"]
    assert diagnostics["steps"] == 20 and np.isfinite(diagnostics["final_loss"])
    assert diagnostics["wall_time"] > 0 and diagnostics["images_per_second"] > 0
    bad = subprocess.run([sys.executable, "-m", "simulations", "pixels", "--head", "deep"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
