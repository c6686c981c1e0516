"""Hugging Face transformers attention modules, run eagerly.

Under ``sdpa``/``flash`` implementations a HF attention module returns no
weights. The adapter switches the module's config to ``eager`` (the same
switch as ``model.set_attn_implementation("eager")``; restored on removal)
and records the weights the module returns. For one query row it switches
to ``sdpa`` instead, where the model supports it, and leaves the row to the
SDPA interception. Which module classes return
attention weights, and at which output index, is read from the model
classes' own ``_can_record_outputs`` (what ``output_attentions=True``
collects), so every HF model that supports ``output_attentions`` is covered
without a list here.

transformers is never imported here: a module can only come from it if the
caller already imported it.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn

from attnvis.errors import ModelError
from attnvis.capture.registry import Recorder, Restore, register_adapter

_DEFAULT_INDEX = 1  # transformers' own default: attention modules return (output, weights, ...)


def _recording_specs(cls: type):
    """(model class, spec) for each model class in ``cls``'s module that records ``cls`` as ``attentions``."""
    for obj in list(vars(sys.modules[cls.__module__]).values()):
        specs = getattr(obj, "_can_record_outputs", None) if isinstance(obj, type) else None
        if not isinstance(specs, dict):
            continue
        entries = specs.get("attentions")
        for spec in entries if isinstance(entries, list) else [entries]:
            target = getattr(spec, "target_class", spec)
            if isinstance(target, type) and issubclass(cls, target):
                yield obj, spec


@functools.lru_cache(maxsize=None)
def attention_output_index(cls: type) -> int | None:
    """Index of the weights in ``cls``'s outputs if a model class records them as ``attentions``."""
    if not cls.__module__.startswith("transformers.models."):
        return None
    for _, spec in _recording_specs(cls):
        return getattr(spec, "index", _DEFAULT_INDEX)
    return None


@functools.lru_cache(maxsize=None)
def supports_sdpa(cls: type) -> bool:
    """Whether the model classes around ``cls`` declare SDPA support (``_supports_sdpa``)."""
    models = [model for model, _ in _recording_specs(cls)]
    return bool(models) and all(getattr(model, "_supports_sdpa", False) for model in models)


def is_hf_attention(module: nn.Module) -> bool:
    """True for a transformers module whose outputs include its attention weights."""
    return hasattr(module, "config") and attention_output_index(type(module)) is not None


def _example() -> tuple[nn.Module, tuple]:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8)
    return ViTModel(config, add_pooling_layer=False).eval(), (torch.randn(2, 3, 32, 32),)


def _switch(config, implementation: str) -> list:
    """Set ``config``'s attention implementation; a Restore only for the first module of a shared config to change it."""
    previous = getattr(config, "_attn_implementation", None)
    if previous == implementation:
        return []
    config._attn_implementation = implementation

    def restore() -> None:
        config._attn_implementation = previous

    return [Restore(restore)]


@register_adapter("transformers eager attention", predicate=is_hf_attention, example=_example)
def attach_hf_attention(module: nn.Module, path: str, recorder: Recorder) -> list:
    """Record the weights ``module`` returns at the index its model class declares.

    For one query row (``recorder.query``) a module whose model supports SDPA
    runs it instead, and the SDPA interception computes the row from its q
    and k; a module that returns weights all the same is recorded from them.
    """
    name = type(module).__name__
    window = getattr(module.config, "window_size", None)
    if window is not None:
        raise ModelError(f"{path} ({name}) uses windowed attention (window {window}): each map covers one local "
                         "window, not the image, and attnvis does not stitch windows")
    index = attention_output_index(type(module))
    row = recorder.query is not None and supports_sdpa(type(module))
    if row:
        recorder.delegated[path] = name
    before: list[int] = []

    def count(_m: nn.Module, _args: tuple) -> None:
        before.append(len(recorder.weights))

    def record(_m: nn.Module, _args: tuple, output) -> None:
        recorded = len(recorder.weights) - before.pop()
        weights = output[index] if isinstance(output, tuple) and len(output) > index else None
        if weights is not None and not recorded:
            recorder.record(path, weights, None, name)  # (B, heads, Q, K)
        elif not recorded:
            raise ModelError(f"{path} ({name}) returned no attention weights under attn_implementation="
                             f"{module.config._attn_implementation!r}; load the model with attn_implementation='eager'")

    handles = _switch(module.config, "sdpa" if row else "eager")
    return [module.register_forward_pre_hook(count), module.register_forward_hook(record), *handles]
