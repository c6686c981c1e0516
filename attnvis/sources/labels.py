"""Class names of a classifier's output, where the model records them (stored as ``attnvis.labels``)."""

from __future__ import annotations

from attnvis.sources.base import ModelSource


def _hf(model) -> list[str] | None:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _torchvision(name: str) -> list[str] | None:
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        return None
    return list(weights[0].meta.get("categories") or []) or None


def _imagenet() -> list[str] | None:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    return [text.split(",")[0].strip() for text in ImageNetInfo().label_descriptions()]


def labels_of(source: ModelSource, num_classes: int) -> list[str] | None:
    """The names of ``source``'s ``num_classes`` outputs, or ``None`` where the model records none.

    From, in order: the source's ``extra["classes"]`` (the embedded model), Hugging Face
    ``config.id2label``, torchvision's weights' ``categories``, timm's ImageNet-1k names (1000 classes).
    A list of another length than ``num_classes`` is not used.
    """
    kind = type(source.model).__module__.split(".")[0]
    found = source.extra.get("classes")
    if found is None and kind == "transformers":
        found = _hf(source.model)
    if found is None and source.name.startswith("torchvision:"):
        found = _torchvision(source.name.partition(":")[2])
    if found is None and kind == "timm" and num_classes == 1000:
        found = _imagenet()
    return list(found) if found is not None and len(found) == num_classes else None
