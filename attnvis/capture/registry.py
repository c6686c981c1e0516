"""The adapter registry: attention module type (or predicate) → adapter.

An adapter makes one kind of attention module's softmax weights observable
while the model runs (eagerly or under ``torch.export``): its ``attach``
function installs hooks or switches on one module instance and returns
handles whose ``remove()`` undoes them. Function-level adapters (such as the
``F.scaled_dot_product_attention`` interception) provide a ``context``
instead, entered once per capture.

Adding a type is one registration::

    @register_adapter("mylib.MyAttention", module_type=MyAttention, example=_tiny_model)
    def _attach(module, path, recorder):
        return [module.register_forward_hook(lambda m, args, out: recorder.record(path, out[1]))]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ContextManager

import torch
from torch import nn

from attnvis.metadata import LayerInfo

Attach = Callable[[nn.Module, str, "Recorder"], list[Any]]


class Restore:
    """A removable handle that runs ``fn`` on ``remove()`` (undoes a switch)."""

    def __init__(self, fn: Callable[[], None]):
        self._fn = fn

    def remove(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


@dataclass
class Recorder:
    """Collects attention weights in call order during one forward pass.

    ``suppress`` counts the module-level adapters currently running, so that a
    function-level capture (SDPA) inside an already captured module is not
    recorded twice.

    With ``query`` set, only that query's row of each layer is kept,
    (B, heads, 1, K): adapters that can compute the row alone (from q and k,
    leaving the model's own attention on its fused path) record it with
    ``q_len``; full weights recorded otherwise are cut to the row. A module
    adapter that lets the SDPA interception record its row instead lists its
    path in ``delegated`` (path → module type) while attaching.
    """

    weights: list[torch.Tensor] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    module_stack: list[str] = field(default_factory=list)
    suppress: int = 0
    query: int | None = None
    delegated: dict[str, str] = field(default_factory=dict)

    def record(self, path: str, weights: torch.Tensor, kind: str | None = None, module_type: str = "",
               q_len: int | None = None) -> None:
        """Append one layer's weights, (B, heads, Q, K) or (B, Q, K).

        ``q_len``: the layer's query length when ``weights`` is already the
        row of :attr:`query` (B, heads, 1, K); ``None`` for full weights.
        """
        if weights.dim() == 3:  # single-head modules: add the heads axis
            weights = weights.unsqueeze(1)
        if weights.dim() != 4:
            raise ValueError(f"attention weights from {path!r} have shape {tuple(weights.shape)}; expected (B, heads, Q, K)")
        if q_len is None:
            q_len = weights.size(2)
            if self.query is not None:
                if self.query >= q_len:
                    raise ValueError(f"attention weights from {path!r} have {q_len} queries; there is no row {self.query}")
                weights = weights[:, :, self.query:self.query + 1]  # (B, heads, 1, K)
        _, heads, _, k_len = weights.shape
        if kind is None:
            kind = "self" if q_len == k_len else "cross"
        self.weights.append(weights)
        self.layers.append(LayerInfo(path, kind, int(heads), int(q_len), int(k_len), module_type))

    @property
    def current_path(self) -> str:
        return self.module_stack[-1] if self.module_stack else ""

    def clear(self) -> None:
        self.weights.clear()
        self.layers.clear()


@dataclass(frozen=True)
class Adapter:
    """One registry entry. Exactly one of ``attach`` / ``context`` is set."""

    name: str
    matches: Callable[[nn.Module], bool] | None = None
    attach: Attach | None = None
    context: Callable[[Recorder], ContextManager] | None = None
    example: Callable[[], tuple[nn.Module, tuple]] | None = None


_REGISTRY: dict[str, Adapter] = {}


def _add(adapter: Adapter) -> None:
    if adapter.name in _REGISTRY:
        raise ValueError(f"attention adapter {adapter.name!r} is already registered")
    _REGISTRY[adapter.name] = adapter


def register_adapter(
    name: str,
    *,
    module_type: type | tuple[type, ...] | None = None,
    predicate: Callable[[nn.Module], bool] | None = None,
    example: Callable[[], tuple[nn.Module, tuple]] | None = None,
) -> Callable[[Attach], Attach]:
    """Decorator registering ``attach`` for modules of ``module_type`` or matching ``predicate``."""
    if (module_type is None) == (predicate is None):
        raise ValueError("register_adapter needs exactly one of module_type= or predicate=")
    matches = predicate if predicate is not None else (lambda m: isinstance(m, module_type))

    def decorator(attach: Attach) -> Attach:
        _add(Adapter(name, matches=matches, attach=attach, example=example))
        return attach

    return decorator


def register_context_adapter(
    name: str, context: Callable[[Recorder], ContextManager], example: Callable[[], tuple[nn.Module, tuple]] | None = None
) -> None:
    """Register a function-level adapter entered once around each capture."""
    _add(Adapter(name, context=context, example=example))


def _ensure_builtins() -> None:
    import attnvis.capture.adapters  # noqa: F401  (registers the built-in adapters)


def list_adapters() -> list[str]:
    """Names of every registered adapter, built-ins first."""
    _ensure_builtins()
    return list(_REGISTRY)


def get_adapter(name: str) -> Adapter:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no attention adapter named {name!r}; registered: {', '.join(_REGISTRY)}") from None


def adapter_for(module: nn.Module) -> Adapter | None:
    """The first module-level adapter whose predicate matches ``module``."""
    _ensure_builtins()
    for adapter in _REGISTRY.values():
        if adapter.matches is not None and adapter.matches(module):
            return adapter
    return None


def context_adapters() -> list[Adapter]:
    _ensure_builtins()
    return [a for a in _REGISTRY.values() if a.context is not None]
