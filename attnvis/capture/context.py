"""Capture attention weights from a model while it runs.

``capture_attention(model)`` attaches the registry's adapters to every
supported attention module (innermost match only), enters the function-level
adapters (the SDPA interception) and yields a :class:`Recorder` whose
``weights`` list fills in call order on each forward pass. It works eagerly
and under ``torch.export``, so the same code serves the PyTorch backend and
the ONNX export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from attnvis.errors import ModelError
from attnvis.capture import registry
from attnvis.capture.registry import Recorder


def _matched_modules(model: nn.Module, module_types: tuple[type, ...] | None) -> list[tuple[str, nn.Module, object]]:
    """(path, module, adapter) for each supported module that has no supported descendant."""
    found = []
    for path, module in model.named_modules():
        if module_types is not None and not isinstance(module, module_types):
            continue
        adapter = registry.adapter_for(module)
        if adapter is not None:
            found.append((path, module, adapter))
    paths = [p for p, _, _ in found]

    def has_matched_child(path: str) -> bool:
        prefix = f"{path}." if path else ""
        return any(other != path and other.startswith(prefix) for other in paths)

    return [item for item in found if not has_matched_child(item[0])]


def _track_stack(model: nn.Module, recorder: Recorder, matched: set[str]) -> list:
    """Hooks keeping ``recorder.module_stack`` and ``recorder.suppress`` current."""
    handles = []
    for path, module in model.named_modules():
        def pre(_m, _args, path=path):
            recorder.module_stack.append(path)
            recorder.suppress += path in matched

        def post(_m, _args, _out, path=path):
            if recorder.module_stack and recorder.module_stack[-1] == path:
                recorder.module_stack.pop()
            recorder.suppress -= path in matched

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    return handles


@contextlib.contextmanager
def capture_attention(model: nn.Module, module_types: tuple[type, ...] | None = None,
                      query: int | None = None) -> Iterator[Recorder]:
    """Record every attention layer's softmax weights while the block runs.

    Args:
        model: any ``nn.Module``; it is left as it was when the block exits.
        module_types: restrict capture to these module classes (the SDPA
            interception is then off); ``None`` uses every registered adapter.
        query: record only this query's row of each layer, (B, heads, 1, K).
            Where the weights come from q and k (SDPA, timm, Hugging Face
            SDPA attention, ``nn.MultiheadAttention``), the row is computed
            alone and the model's own attention keeps its fused path, so no
            (Q, K) matrix is made for the capture.

    Yields:
        The recorder; after each forward, ``recorder.weights[i]`` is layer
        ``i``'s weights shaped (B, heads, Q, K) and ``recorder.layers[i]`` its
        :class:`~attnvis.metadata.LayerInfo`.
    """
    if query is not None and module_types is not None:
        raise ValueError("capture_attention: query rows need the SDPA interception, which module_types turns off")
    recorder = Recorder(query=query)
    matched = _matched_modules(model, module_types)
    handles: list = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.TransformerEncoderLayer's fast path skips its MultiheadAttention module.
        torch.backends.mha.set_fastpath_enabled(False)
        for path, module, adapter in matched:
            handles.extend(adapter.attach(module, path, recorder))
        recording = {p for p, _, _ in matched if p not in recorder.delegated}  # their SDPA calls are not recorded again
        handles.extend(_track_stack(model, recorder, recording))
        with contextlib.ExitStack() as stack:
            if module_types is None:
                for adapter in registry.context_adapters():
                    stack.enter_context(adapter.context(recorder))
            yield recorder
    finally:
        for handle in reversed(handles):
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)


def module_type_summary(model: nn.Module, limit: int = 12) -> str:
    """The distinct module class names in ``model``, for "nothing captured" messages."""
    names = list(dict.fromkeys(type(m).__name__ for m in model.modules()))
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def no_maps_error(model: nn.Module) -> ModelError:
    return ModelError(
        "No attention maps captured: the model has no supported attention module "
        f"(module types found: {module_type_summary(model)}); "
        "register an adapter with attnvis.capture.registry.register_adapter"
    )


@dataclass
class AttentionHooks:
    """What :func:`register_attention_hooks` returns: live maps plus ``remove()``.

    ``maps`` maps each layer's module path to its latest weights
    (B, heads, Q, K), in call order. Use it as a context manager to remove the
    hooks on exit (exceptions propagate).
    """

    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    _exit: contextlib.ExitStack | None = None
    _recorder: Recorder | None = None

    def refresh(self) -> dict[str, torch.Tensor]:
        self.maps.clear()
        if self._recorder is not None:
            for info, weights in zip(self._recorder.layers, self._recorder.weights):
                self.maps[_unique(self.maps, info.name)] = weights.detach()
        return self.maps

    def remove(self) -> None:
        if self._exit is not None:
            self.refresh()
            self._exit.close()
            self._exit = None

    def __enter__(self) -> "AttentionHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _unique(existing: dict, name: str) -> str:
    if name not in existing:
        return name
    i = 1
    while f"{name}#{i}" in existing:
        i += 1
    return f"{name}#{i}"


def register_attention_hooks(model: nn.Module, module_types: tuple[type, ...] | type | None = None) -> AttentionHooks:
    """Hook ``model`` so each forward pass stores every layer's attention weights.

    Args:
        model: the model to observe.
        module_types: only capture these attention module classes; ``None``
            captures every module the registry supports (and SDPA calls).

    Returns:
        An :class:`AttentionHooks`; read ``hooks.maps`` after a forward
        (``refresh()`` is called by a forward hook on the model), call
        ``hooks.remove()`` (or use ``with``) to detach.
    """
    if isinstance(module_types, type):
        module_types = (module_types,)
    hooks = AttentionHooks()
    stack = contextlib.ExitStack()
    recorder = stack.enter_context(capture_attention(model, module_types))

    def before(_m, _args):
        recorder.clear()

    def after(_m, _args, _out):
        hooks.refresh()

    stack.enter_context(_removing(model.register_forward_pre_hook(before)))
    stack.enter_context(_removing(model.register_forward_hook(after)))
    hooks._exit, hooks._recorder = stack, recorder
    return hooks


@contextlib.contextmanager
def _removing(handle):
    try:
        yield handle
    finally:
        handle.remove()
