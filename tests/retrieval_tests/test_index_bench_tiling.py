"""The index benchmark's tiling of real embeddings (`--real-embeddings X --tile-to N`): noisy,
unit-norm copies that stay near their source image and are not identical to each other."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "index_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("index_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def emb():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 64)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_tiled_copies_are_unit_vectors_of_the_asked_shape_with_their_source(bench, emb):
    x, source = bench.tile_embeddings(emb, 1000, 0.3, seed=1, chunk=128)
    assert x.shape == (1000, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(source, np.arange(1000) % 37)


def test_copies_are_near_their_source_and_not_identical_to_each_other(bench, emb):
    noise = 0.3
    x, source = bench.tile_embeddings(emb, 1000, noise, seed=1)
    to_source = np.einsum("ij,ij->i", x, emb[source])
    # noise of norm ~0.3 around a unit vector: cosine ~ 1 / sqrt(1 + 0.09) ~ 0.958
    assert 0.93 < to_source.mean() < 0.98
    # every copy is closer to its own source than to any other original row
    assert np.array_equal((x @ emb.T).argmax(axis=1), source)
    # two copies of one row differ (fresh noise for each)
    assert np.einsum("ij,ij->i", x[:37], x[37:74]).max() < 0.99


def test_tiling_is_reproducible_and_depends_on_the_seed(bench, emb):
    a, _ = bench.tile_embeddings(emb, 200, 0.5, seed=3)
    b, _ = bench.tile_embeddings(emb, 200, 0.5, seed=3)
    c, _ = bench.tile_embeddings(emb, 200, 0.5, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_tiling_profile_reports_copies_closer_than_other_images(bench, emb):
    x, source = bench.tile_embeddings(emb, 2000, 0.3, seed=1)
    profile = bench.tiling_profile(emb, x, source)
    assert profile["intra_mean"] > profile["inter_mean"] + 0.5
    assert profile["copies_per_row"] == pytest.approx(2000 / 37)
