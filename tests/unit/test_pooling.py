"""Pooling against values computed by hand."""

import pytest
import torch

from pipelines.embed.pooling import cls_pool, last_token_pool, mean_pool, pool

# Two texts, three positions, two dims. Row 0 has two real tokens, row 1 all three.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
        [[0.0, 0.0], [6.0, 3.0], [3.0, 9.0]],
    ]
)
RIGHT = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_mean_ignores_padding():
    out = mean_pool(HIDDEN, RIGHT)
    assert torch.allclose(out, torch.tensor([[2.0, 3.0], [3.0, 4.0]]))


def test_cls_takes_first_real_token():
    assert torch.equal(cls_pool(HIDDEN, RIGHT), torch.tensor([[1.0, 2.0], [0.0, 0.0]]))


def test_last_token_right_padding():
    assert torch.equal(last_token_pool(HIDDEN, RIGHT), torch.tensor([[3.0, 4.0], [3.0, 9.0]]))


def test_last_token_left_padding():
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert torch.equal(last_token_pool(HIDDEN, left), torch.tensor([[100.0, 100.0], [3.0, 9.0]]))
    # mean with left padding averages the real tokens only
    assert torch.allclose(mean_pool(HIDDEN, left), torch.tensor([[51.5, 52.0], [3.0, 4.0]]))


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="cls.*last.*max.*mean.*weightedmean"):
        pool("maximum", HIDDEN, RIGHT)
