"""Metadata an exported model carries: layers, token layout, preprocessing.

Everything here is plain data that round-trips through JSON, so that the
ONNX file alone is enough to preprocess inputs and render its maps.
The ONNX model's ``metadata_props`` hold one JSON document per key in
``ModelMetadata.to_props`` (``attnvis.layers``, ``attnvis.tokens``, ...).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from attnvis.errors import InputError

REDUCTIONS = ("none", "mean-heads", "cls")
PROP_PREFIX = "attnvis."


@dataclass(frozen=True)
class WindowLayout:
    """Where one windowed-attention block's windows lie (Swin and kin).

    The block attends within ``window × window`` windows of its stage's token
    grid, padded at the bottom/right to a multiple of ``window`` and, for a
    shifted block, rolled by ``-shift`` along both axes first (as
    ``torch.roll(x, (-shift, -shift))``). Windows are numbered row-major over
    the padded grid; a key's index inside its window is row-major too.
    torchvision does not shift along an axis whose padded size is no larger
    than the window, so its shift can differ between the axes.

    Attributes:
        stage: the stage (resolution level) the block belongs to, from 0.
        grid: the stage's token grid ``(h, w)`` before padding.
        window: the window side, in tokens (``Q = K = window²``).
        shift: the cyclic shift, in tokens; 0 for an unshifted block; a pair
            ``(rows, columns)`` where it differs between the axes (a pair
            equal on both axes is stored as one int; :attr:`shifts` gives both).
        roll_before_pad: the block rolls the unpadded grid and pads it after
            (timm); ``False``: it pads first and rolls the padded grid
            (Hugging Face, torchvision). The same where no padding is needed.
    """

    stage: int
    grid: tuple[int, int]
    window: int
    shift: int | tuple[int, int] = 0
    roll_before_pad: bool = False

    def __post_init__(self) -> None:
        # one int where both axes agree: Hugging Face / timm layouts (and their JSON) stay as they were
        if isinstance(self.shift, (tuple, list)):
            rows, cols = (int(s) for s in self.shift)
            object.__setattr__(self, "shift", rows if rows == cols else (rows, cols))

    @property
    def shifts(self) -> tuple[int, int]:
        """The cyclic shift along (rows, columns)."""
        return (self.shift, self.shift) if isinstance(self.shift, int) else self.shift

    @property
    def padded(self) -> tuple[int, int]:
        """The grid padded to whole windows."""
        return tuple(-(-side // self.window) * self.window for side in self.grid)

    @property
    def num_windows(self) -> int:
        ph, pw = self.padded
        return (ph // self.window) * (pw // self.window)


@dataclass(frozen=True)
class LayerInfo:
    """One captured attention layer, in call order.

    Attributes:
        name: module path inside the model (``blocks.3.attn``).
        kind: ``"self"`` or ``"cross"``.
        heads: number of heads.
        q_len: query length.
        k_len: key length.
        module_type: class name of the attention module.
        window: the window layout of a windowed-attention block; ``None`` for global attention.
    """

    name: str
    kind: str
    heads: int
    q_len: int
    k_len: int
    module_type: str = ""
    window: WindowLayout | None = None


@dataclass(frozen=True)
class TokenLayout:
    """How the key axis maps back to the image.

    Attributes:
        prefix_tokens: tokens before the patches (CLS, distillation, registers).
        grid: patch grid ``(h, w)``; ``None`` for region or sequence keys.
        kind: ``"grid"`` (patches), ``"regions"`` (detector boxes) or
            ``"sequence"`` (no spatial meaning).
        cls_index: index of the token whose row is rendered, or ``None``
            when the model has no CLS token (the mean over queries is used).
        prefix_names: names of the prefix tokens, e.g. ``["cls", "dist"]``.
    """

    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    kind: str = "grid"
    cls_index: int | None = None
    prefix_names: tuple[str, ...] = ()

    @property
    def num_patches(self) -> int | None:
        return None if self.grid is None else self.grid[0] * self.grid[1]


#: The largest input side attnvis exports a model for: at a 16-pixel patch, 256 x 256 = 65,536 tokens,
#: whose attention maps (65,536² weights a head) are already past any memory.
MAX_IMAGE_SIDE = 4096


def size2(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``224`` or ``(224, 320)`` → ``(224, 320)``; ``None`` stays ``None``.

    Raises:
        InputError: not positive, or past :data:`MAX_IMAGE_SIDE` (the message names the bound).
    """
    if image_size is None:
        return None
    try:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image size {image_size!r} is not a positive int or (height, width)")
    if max(size) > MAX_IMAGE_SIDE:
        raise InputError(f"image size {size[0]}x{size[1]} is past attnvis's bound of {MAX_IMAGE_SIDE} pixels a side "
                         "(attnvis.metadata.MAX_IMAGE_SIDE); give a smaller --image-size")
    return size


@dataclass(frozen=True)
class Preprocess:
    """How an RGB uint8 image becomes the model's input tensor.

    ``size`` is the network input ``(height, width)``. The image is resized
    (``resize_short`` keeps the aspect and resizes the short side, then
    center-crops to ``size``; otherwise it is resized straight to ``size``),
    scaled by ``scale``, normalized with ``mean``/``std`` and laid out NCHW.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    resize_short: bool = False
    scale: float = 1.0 / 255.0


@dataclass
class ModelMetadata:
    """All an exported model says about itself.

    ``explain`` is set on graphs exported with ``--explain`` (:mod:`attnvis.explain`):
    ``{"methods": [...], "start_layer": int, "discard_ratio": float}``; the graph then takes a
    ``target`` input (int64 ``[B]``, negative = top-1) and has a ``relevance_{method}`` output
    (``[B, patches]``, hyphens as underscores) per method after the model's own outputs.
    ``labels`` are the class names of a classifier's output (``attnvis.labels``), or ``None``.
    """

    layers: list[LayerInfo] = field(default_factory=list)
    tokens: TokenLayout = field(default_factory=TokenLayout)
    preprocess: Preprocess | None = None
    reduction: str = "none"
    input_name: str = "pixel_values"
    model_outputs: list[str] = field(default_factory=list)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    explain: dict[str, Any] | None = None
    labels: list[str] | None = None

    @property
    def attn_outputs(self) -> list[str]:
        return [f"attn_{i}" for i in range(len(self.layers))]

    def to_props(self) -> dict[str, str]:
        """Flatten into ONNX ``metadata_props`` (string → JSON string)."""
        from attnvis import __version__

        doc = {
            "version": __version__,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "tokens": dataclasses.asdict(self.tokens),
            "preprocess": None if self.preprocess is None else dataclasses.asdict(self.preprocess),
            "reduction": self.reduction,
            "input_name": self.input_name,
            "model_outputs": self.model_outputs,
            "source": self.source,
            "extra": self.extra,
            "explain": self.explain,
            "labels": self.labels,
        }
        # plain exports carry no explain/labels keys: their files stay as they were
        return {PROP_PREFIX + key: json.dumps(value) for key, value in doc.items()
                if value is not None or key not in ("explain", "labels")}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        """Inverse of :meth:`to_props`; raises ``ValueError`` if absent."""
        doc = {k[len(PROP_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(PROP_PREFIX)}
        if "layers" not in doc:
            raise ValueError("not an attnvis model: its metadata has no 'attnvis.layers' entry")
        tokens = dict(doc.get("tokens") or {})
        if tokens.get("grid") is not None:
            tokens["grid"] = tuple(tokens["grid"])
        tokens["prefix_names"] = tuple(tokens.get("prefix_names") or ())
        pre = doc.get("preprocess")
        if pre is not None:
            pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
        return cls(
            layers=[_layer(layer) for layer in doc["layers"]],
            tokens=TokenLayout(**tokens),
            preprocess=pre,
            reduction=doc.get("reduction", "none"),
            input_name=doc.get("input_name", "pixel_values"),
            model_outputs=list(doc.get("model_outputs") or []),
            source=doc.get("source", ""),
            extra=dict(doc.get("extra") or {}),
            explain=doc.get("explain"),
            labels=doc.get("labels"),
        )


def _layer(doc: dict) -> LayerInfo:
    """A :class:`LayerInfo` from its JSON (files without ``window`` are global attention)."""
    window = doc.get("window")
    if window is not None:
        window = WindowLayout(**{**window, "grid": tuple(window["grid"])})
    return LayerInfo(**{**doc, "window": window})
