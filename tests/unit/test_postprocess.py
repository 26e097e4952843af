"""Matryoshka truncation and normalisation against values computed by hand."""

import numpy as np
import pytest

from pipelines.embed.postprocess import l2_normalize, postprocess, truncate_dimension


def test_normalize_by_hand():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])  # zero row stays zero, no NaN


def test_truncate_then_renormalize_by_hand():
    pooled = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)  # norm 13
    out = postprocess(pooled, dimension=2)
    assert out.dtype == np.float32 and out.shape == (1, 2)
    assert np.allclose(out, [[0.6, 0.8]])


def test_equals_normalize_of_truncate_of_full():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(5, 384)).astype(np.float32)
    for dim in (256, 128, 64):
        expected = l2_normalize(truncate_dimension(full, dim))
        assert np.allclose(postprocess(full, dim), expected, atol=1e-6)
        assert np.allclose(np.linalg.norm(postprocess(full, dim), axis=1), 1.0, atol=1e-6)


def test_full_dimension_is_plain_normalize():
    v = np.array([[1.0, 1.0]], dtype=np.float32)
    assert np.allclose(postprocess(v, 2), [[2**-0.5, 2**-0.5]])


def test_without_normalize_only_truncates():
    v = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    assert np.array_equal(postprocess(v, 2, normalize=False), [[1.0, 2.0]])


def test_refuses_larger_dimension():
    with pytest.raises(ValueError, match="exceeds"):
        truncate_dimension(np.zeros((1, 4)), 8)
