"""Capture: make every attention layer's softmax weights observable.

:mod:`~attnvis.capture.registry` maps attention module types (or predicates)
to adapters (:mod:`~attnvis.capture.adapters`); :mod:`~attnvis.capture.context`
attaches them for the length of a ``with`` block.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "capture_attention": "attnvis.capture.context",
    "register_attention_hooks": "attnvis.capture.context",
    "list_adapters": "attnvis.capture.registry",
    "register_adapter": "attnvis.capture.registry",
    "register_context_adapter": "attnvis.capture.registry",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
