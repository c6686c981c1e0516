"""Explain: class-specific relevance of a ViT classifier's patches (Chefer, grad-rollout, Grad-CAM).

:data:`METHODS` is the one table of methods (:mod:`attnvis.explain.methods`),
each a short rule over the attention maps and their gradients (or LRP
relevances); :func:`explain_pass` (:mod:`attnvis.explain.trace`) runs the
forward and backward they need, eagerly or traced into the exported graph
(``attnvis export --explain``). The user-facing call is ``attnvis.explain(...)``
(:func:`attnvis.runtime.explain.explain`): this package is callable for it.
"""

import importlib
import sys
import types

from attnvis._lazy import lazy_attributes

_LAZY = {
    "METHODS": "attnvis.explain.methods",
    "Method": "attnvis.explain.methods",
    "Traces": "attnvis.explain.methods",
    "check_methods": "attnvis.explain.methods",
    "register_method": "attnvis.explain.methods",
    "relevance_output": "attnvis.explain.methods",
    "Options": "attnvis.explain.trace",
    "explain_pass": "attnvis.explain.trace",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


class _CallablePackage(types.ModuleType):
    """``attnvis.explain(model, inputs, method=...)`` calls :func:`attnvis.runtime.explain.explain`.

    The public name is both this package (``attnvis.explain.METHODS``) and the call users make;
    the call lives in the runtime layer, above this one, so it is looked up by name when called.
    """

    def __call__(self, model, inputs, **kwargs):
        return importlib.import_module("attnvis.runtime.explain").explain(model, inputs, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
