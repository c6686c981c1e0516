"""Full maps reduced on the device (torch, here on the CPU) give the grids, head grids and rollout of the full maps."""

from types import SimpleNamespace

import numpy as np
import pytest

from attnvis.batch._device_maps import reduce_batch
from attnvis.metadata import TokenLayout
from attnvis.render import attention_grid, head_grids
from attnvis.render.rollout import rollout_row

torch = pytest.importorskip("torch")


def _maps(rng, batch: int, heads: int, size: int, layers: int = 3) -> list[np.ndarray]:
    logits = rng.standard_normal((layers, batch, heads, size, size)).astype(np.float32)
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return [np.ascontiguousarray(layer, dtype=np.float32) for layer in soft]


@pytest.mark.parametrize("tokens", [
    TokenLayout(prefix_tokens=1, grid=(2, 3), cls_index=0, prefix_names=("cls",)),
    TokenLayout(prefix_tokens=0, grid=(2, 3), cls_index=None),
], ids=["cls", "no-cls"])
def test_reduced_rows_give_the_full_maps_grids_and_rollout(tokens):
    rng = np.random.default_rng(0)
    full = _maps(rng, batch=4, heads=2, size=tokens.prefix_tokens + 6)
    plan = SimpleNamespace(metadata=SimpleNamespace(tokens=tokens), store_layout=SimpleNamespace(rollout=True))
    rows, rollouts = reduce_batch(SimpleNamespace(maps=full), 3, plan, torch.device("cpu"))  # batch padded to 4
    assert len(rows) == len(rollouts) == 3
    for b in range(3):
        assert [r.shape for r in rows[b]] == [(2, 1, tokens.prefix_tokens + 6)] * 3
        for layer in range(3):
            np.testing.assert_allclose(attention_grid(rows[b][layer], tokens), attention_grid(full[layer][b], tokens),
                                       atol=1e-6)
            np.testing.assert_allclose(head_grids(rows[b][layer], tokens), head_grids(full[layer][b], tokens), atol=1e-6)
        want = rollout_row([layer[b] for layer in full], tokens)
        assert rollouts[b].dtype == np.float32 and rollouts[b].shape == want.shape
        np.testing.assert_allclose(rollouts[b], want, atol=1e-6)


def test_no_rollout_when_the_store_keeps_none():
    tokens = TokenLayout(prefix_tokens=1, grid=(1, 2), cls_index=0, prefix_names=("cls",))
    plan = SimpleNamespace(metadata=SimpleNamespace(tokens=tokens), store_layout=None)
    rows, rollouts = reduce_batch(SimpleNamespace(maps=_maps(np.random.default_rng(1), 2, 1, 3)), 2, plan, "cpu")
    assert rollouts == [None, None] and rows[1][0].shape == (1, 1, 3)
