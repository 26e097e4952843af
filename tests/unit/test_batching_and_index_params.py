import pytest

from pipelines.config import IndexConfig
from pipelines.embed.batching import token_budget_batches
from pipelines.vector_index.params import derive_index_params, min_index_rows


def test_token_budget_batches_cover_every_row_once_within_budget():
    lengths = [5, 100, 7, 50, 3, 100, 60, 1]
    batches = list(token_budget_batches(lengths, budget=200))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 200
    # longest first: the two 100-token rows share the first batch
    assert sorted(batches[0]) == [1, 5]


def test_row_longer_than_budget_gets_its_own_batch():
    assert list(token_budget_batches([500, 2], budget=100)) == [[0], [1]]


@pytest.mark.parametrize(
    "rows, dim, partitions, sub_vectors",
    [
        (1_000_000, 256, 1000, 32),
        (3000, 384, 11, 48),
        (300, 384, 1, 48),
        (100_000, 384, 316, 48),
        (50_000, 100, 195, 10),
    ],
)
def test_derived_ivf_pq_params(rows, dim, partitions, sub_vectors):
    p = derive_index_params(rows, dim, IndexConfig(type="ivf_pq", min_rows=256))
    assert (p.type, p.num_partitions, p.num_sub_vectors) == ("ivf_pq", partitions, sub_vectors)
    assert dim % p.num_sub_vectors == 0
    assert 1 <= p.nprobes <= p.num_partitions


def test_the_default_index_is_ivf_rq_with_4_bits_and_needs_a_dimension_divisible_by_8():
    p = derive_index_params(1_000_000, 256, IndexConfig())
    assert (p.type, p.num_partitions, p.num_bits, p.num_sub_vectors) == ("ivf_rq", 1000, 4, None)
    assert derive_index_params(3000, 384, IndexConfig(num_bits=1)).num_bits == 1
    with pytest.raises(ValueError, match="divisible by 8, this one is 100"):  # a model's own dimension
        derive_index_params(50_000, 100, IndexConfig())


def test_too_few_rows_means_no_index_with_reason():
    p = derive_index_params(100, 384, IndexConfig(min_rows=256))
    assert p.type == "none" and p.reason == "100 rows < index.min_rows (256)"


def test_auto_min_rows_follows_the_dimension_where_exact_search_stays_under_5_ms():
    # bench/exact_crossover.py: exact search's p50 crossed 5 ms near 1M floats (rows x dimension)
    assert min_index_rows(IndexConfig(), 384) == 2605 and min_index_rows(IndexConfig(), 256) == 3907
    assert min_index_rows(IndexConfig(min_rows=10), 384) == 10
    p = derive_index_params(2604, 384, IndexConfig())
    assert p.type == "none" and p.reason == "2604 rows < index.min_rows (auto: 2605 at dimension 384)"
    assert derive_index_params(2605, 384, IndexConfig()).type == "ivf_rq"
    assert derive_index_params(3000, 256, IndexConfig()).type == "none"


def test_explicit_values_win():
    p = derive_index_params(10_000, 384, IndexConfig(type="ivf_pq", num_partitions=7, num_sub_vectors=24, nprobes=3))
    assert (p.num_partitions, p.num_sub_vectors, p.nprobes) == (7, 24, 3)
