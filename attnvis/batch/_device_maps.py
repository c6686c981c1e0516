"""Full maps on the GPU, reduced there: the rows a batch's stages read, copied to the host once per batch.

With ``--reduce none`` a ViT-B/16 image has 12 × 12 × 197 × 197 floats
(21 MiB) of maps, and copying them to the host, not the model, bounds a
GPU run. What the stages read of them is each head's query row (the CLS row,
or the mean over queries for a model without CLS: :func:`attnvis.render.grid._query_row`)
and, for a map store, the rollout row. :func:`reduce_batch` computes those on
the device from the ``OrtValue`` s the session left there (read in place as
torch tensors), packs them into one tensor and copies it to page-locked host
memory in one transfer. Each layer's rows then reach the stages as a
``[heads, 1, K]`` map, one query row: every grid the stages draw from it
(head mean, one head, per-head previews, store rows) is the one the full map
gives, and the rollout row goes to the store beside them.

Where the stages need the maps themselves (``--save-raw``, windowed blocks, a
CLS token not first) :func:`reducible` says why and the maps come to the host.
"""

from __future__ import annotations

import numpy as np


def reducible(plan) -> tuple[bool, str]:
    """(the full maps can be reduced on the device for ``plan``, why not)."""
    meta, tokens = plan.metadata, plan.metadata.tokens
    if meta.reduction != "none":
        return False, f"the model's maps are already reduced in-graph ({meta.reduction})"
    if plan.options.save_raw:
        return False, "--save-raw writes the full maps"
    if tokens.kind != "grid" or tokens.grid is None or tokens.cls_index not in (None, 0):
        return False, "its token layout has no CLS token first and patch grid"
    if any(layer.window is not None for layer in meta.layers):
        return False, "windowed blocks are stitched from their full maps"
    return True, ""


class _CudaArray:
    """An ``OrtValue`` on the GPU as a ``__cuda_array_interface__`` (read in place by torch)."""

    def __init__(self, value):
        self.value = value  # kept alive while the tensor is used
        self.__cuda_array_interface__ = {"shape": tuple(value.shape()), "typestr": "<f4", "strides": None,
                                         "data": (value.data_ptr(), False), "version": 3}


def _as_tensor(value, device):
    """A layer's maps (an ``OrtValue`` on the GPU, or a NumPy array) as a torch float32 tensor on ``device``."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(value).to(device)
    return torch.as_tensor(_CudaArray(value), device=device)


def _rollout(layers: list, tokens, n: int):
    """The rollout row of each image, float32 [n, T - prefix], as :func:`attnvis.render.rollout.rollout_row` (mean fusion).

    ``v ← v / (rowsum(Ā) + 1) · (Ā + I)`` from the last layer down (Ā: the heads' mean), in float64.
    """
    import torch

    size = layers[0].shape[-1]
    device = layers[0].device
    if tokens.cls_index is None:
        vector = torch.full((n, size), 1.0 / size, dtype=torch.float64, device=device)
    else:
        vector = torch.zeros((n, size), dtype=torch.float64, device=device)
        vector[:, tokens.cls_index] = 1.0
    for layer in reversed(layers):
        mean = layer[:n].double().mean(dim=1)  # (n, T, T)
        weights = vector / (mean.sum(dim=-1) + 1.0)
        vector = torch.bmm(weights[:, None, :], mean)[:, 0] + weights
    return vector[:, tokens.prefix_tokens:].float()


def reduce_batch(maps, n: int, plan, device) -> tuple[list[list[np.ndarray]], list[np.ndarray | None]]:
    """Per image, each layer's ``[heads, 1, K]`` query rows; per image its rollout row (or ``None``).

    Args:
        maps: the session's :class:`~attnvis.runtime.AttentionMaps` with full maps
            left on the device (``run(..., host_maps=False)``).
        n: the images in the (padded) batch.
        plan: the run's plan (its store layout says whether a rollout is stored).
        device: the torch device the maps are on.
    """
    import torch

    tokens = plan.metadata.tokens
    layers = [_as_tensor(m, device) for m in maps.maps]  # (B, heads, Q, K) each
    if tokens.cls_index is None:
        rows = [a[:n].mean(dim=2, keepdim=True) for a in layers]
    else:
        rows = [a[:n, :, tokens.cls_index:tokens.cls_index + 1] for a in layers]  # (n, heads, 1, K)
    parts = [r.reshape(n, -1) for r in rows]
    roll = plan.store_layout is not None and plan.store_layout.rollout
    if roll:
        parts.append(_rollout(layers, tokens, n))
    host = _to_host(torch.cat(parts, dim=1))  # (n, total): one copy for the batch
    out, rollouts, start = [[] for _ in range(n)], [None] * n, 0
    for r in rows:
        width = r[0].numel()
        for b in range(n):
            out[b].append(host[b, start:start + width].reshape(r.shape[1:]))
        start += width
    if roll:
        for b in range(n):
            rollouts[b] = host[b, start:]
    return out, rollouts


def _to_host(x) -> np.ndarray:
    """``x`` in host memory: through a page-locked buffer when on the GPU (one DMA), then a NumPy array of its own."""
    import torch

    if x.device.type != "cuda":
        return x.contiguous().numpy().copy()
    pinned = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    pinned.copy_(x)
    return pinned.numpy()  # pinned memory owned by this array: freed with it
