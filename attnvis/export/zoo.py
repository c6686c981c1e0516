"""Vision transformers from timm, torchvision and Hugging Face, loaded from local files only.

Each loader returns a :class:`~attnvis.export.sources.ModelSource` whose
token layout is read from the model itself (prefix-token parameters, the
patch-embedding convolution applied to the input size) and checked against
the sequence length the attention layers actually see, and whose
preprocessing comes from the model's own configuration (timm
``pretrained_cfg``, the Hugging Face image processor config, torchvision's
weights transforms). Nothing is downloaded: models are built with random
weights and ``--weights`` / the Hugging Face directory supply the values.

Windowed attention (Swin and relatives) is rejected: its maps cover one
window each, not the image, and attnvis does not stitch windows.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnvis.errors import InputError, ModelError
from attnvis.export.metadata import Preprocess, TokenLayout
from attnvis.export.sources import ModelSource

#: Hugging Face ``model_type`` values whose token layout attnvis knows.
HF_MODEL_TYPES = ("vit", "deit", "beit", "data2vec-vision", "dinov2", "dinov2_with_registers", "clip",
                  "clip_vision_model")
#: Resampling codes of PIL (as stored in HF image processor configs) → names the runtime knows.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_EXAMPLE_BATCH = 2  # batch 1 would let torch.export specialise the dynamic batch axis


# ---------------------------------------------------------------- common helpers

def _size2(image_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``224`` or ``(224, 320)`` → ``(224, 320)``; ``None`` stays ``None``."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"image size {image_size!r} is not a positive int or (height, width)")
    return size


def example_inputs(size: tuple[int, int]) -> tuple[torch.Tensor]:
    """A fixed, seeded (2, 3, H, W) batch for tracing and validation."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(_EXAMPLE_BATCH, 3, *size, generator=generator),)


def conv_grid(conv: nn.Conv2d, size: tuple[int, int]) -> tuple[int, int]:
    """Output (h, w) of a patch-embedding convolution on an input of ``size``."""
    pad = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
    return tuple(  # type: ignore[return-value]
        (size[i] + 2 * pad[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
        for i in range(2)
    )


def _prefix_layout(names: list[str], grid: tuple[int, int]) -> TokenLayout:
    """Token layout with ``names`` before the patches; the CLS row is rendered when there is one."""
    cls_index = names.index("cls") if "cls" in names else None
    return TokenLayout(prefix_tokens=len(names), grid=grid, kind="grid", cls_index=cls_index,
                       prefix_names=tuple(names))


def check_layout(source: ModelSource) -> None:
    """Run the model once and check every self-attention's key length is prefix + h·w.

    Raises:
        ModelError: a layer sees another number of tokens (the layout would
            paint a wrong picture), or no attention was captured.
    """
    from attnvis.export.capture import capture_attention, no_maps_error

    tokens = source.tokens
    expected = tokens.prefix_tokens + (tokens.num_patches or 0)
    with capture_attention(source.model) as recorder, torch.no_grad():
        source.model(*source.example_inputs)
    if not recorder.layers:
        raise no_maps_error(source.model)
    wrong = [layer for layer in recorder.layers if layer.k_len != expected]
    if wrong:
        layer = wrong[0]
        raise ModelError(
            f"{source.name}: layer {layer.name} ({layer.module_type}) attends over {layer.k_len} tokens, but the "
            f"model's layout gives {tokens.prefix_tokens} prefix + {tokens.grid} patches = {expected}; "
            "attnvis cannot map these tokens to the image")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.pth``/``.pt``/``.bin``/``.safetensors`` checkpoint.

    Unwraps the usual containers (``state_dict``, ``model``, ``state_dict_ema``)
    and a ``module.`` prefix left by DataParallel. Never unpickles code
    (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files raise many types (pickle, zip, safetensors)
        raise ModelError(f"cannot read weights {path}: {err}; give a PyTorch state dict (.pth) or .safetensors") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state dict of tensors; save model.state_dict() there")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` that names the mismatch instead of dumping every key."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).split("\n\t")[1:2]
        raise ModelError(f"the weights do not fit {what}: {first[0] if first else err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"the weights do not fit {what}: missing {_few(result.missing_keys)}, unexpected {_few(result.unexpected_keys)}")


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" … ({len(keys)} in all)" if len(keys) > n else "")


def _windowed(model: nn.Module) -> str | None:
    """Class name of the first windowed-attention module, if any."""
    for module in model.modules():
        name = type(module).__name__
        if "Attention" in name and ("Window" in name or hasattr(module, "window_size")):
            return name
    return None


def _reject_windowed(model: nn.Module, what: str) -> None:
    found = _windowed(model)
    if found is not None:
        raise ModelError(
            f"{what} uses windowed attention ({found}): each map covers one local window, not the image, and "
            "attnvis does not stitch windows; use a global-attention ViT (ViT, DeiT, BEiT, DINOv2, CLIP)")


def _import(package: str, extra: str):
    try:
        return __import__(package)
    except ImportError:
        raise ModelError(f"{package} is not installed; pip install 'attnvis[{extra}]'") from None


# ---------------------------------------------------------------- timm

def load_timm(name: str, weights: str | None = None, image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A timm model by name, random weights or ``weights`` (a local state dict), never downloaded.

    Args:
        name: a timm model name, e.g. ``vit_tiny_patch16_224``.
        weights: local ``.pth``/``.safetensors`` state dict for that model.
        image_size: input (height, width); other than the model's default it
            turns on timm's dynamic image size (position embeddings resampled
            in the graph), so non-square inputs work and weights load as saved.

    Raises:
        InputError: unknown name or missing weights file.
        ModelError: not a patch-token ViT (no patch embedding, windowed
            attention) or the weights do not fit.
    """
    timm = _import("timm", "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise InputError(f"timm has no model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    size = _size2(image_size)
    model = _create_timm(timm, name, size)
    what = f"timm model {name!r} ({type(model).__name__})"
    _reject_windowed(model, what)
    if weights is not None:
        state = read_state_dict(weights)
        load_weights(model, _timm_filter(model, state), what)
    size = size or tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    source = ModelSource(model.eval(), example_inputs(size), timm_layout(model, size, what),
                         timm_preprocess(model, size), f"timm:{name}")
    check_layout(source)
    return source


def _create_timm(timm, name: str, size: tuple[int, int] | None) -> nn.Module:
    """``create_model(pretrained=False)``; a non-default size asks for dynamic image size."""
    default = tuple(timm.get_pretrained_cfg_value(name, "input_size") or (3, 224, 224))[-2:]
    if size is None or size == default:
        return timm.create_model(name, pretrained=False)
    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True)
    except TypeError:  # the architecture has no dynamic size: build it for this size instead
        return timm.create_model(name, pretrained=False, img_size=size)


def _timm_filter(model: nn.Module, state: dict) -> dict:
    """Apply the architecture's own checkpoint filter (pos-embed resampling, key renames)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # a filter for another checkpoint format: load the keys as they are
        return state


def timm_layout(model: nn.Module, size: tuple[int, int], what: str = "timm model") -> TokenLayout:
    """Prefix tokens (``cls``, ``dist``, ``reg*``) and patch grid of a timm ViT on ``size`` inputs."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
        raise ModelError(f"{what} has no patch embedding with prefix tokens: attnvis renders token attention "
                         "of ViT-style models (VisionTransformer, DeiT, EVA, BEiT, ...)")
    if hasattr(patch_embed, "dynamic_feat_size"):
        grid = tuple(patch_embed.dynamic_feat_size(size))
    else:
        grid = conv_grid(patch_embed.proj, size)
    names = ["cls"] if getattr(model, "cls_token", None) is not None else []
    names += ["dist"] if getattr(model, "dist_token", None) is not None else []
    reg = getattr(model, "reg_token", None)
    names += [f"reg{i}" for i in range(0 if reg is None else reg.shape[1])]
    if len(names) != model.num_prefix_tokens:
        raise ModelError(f"{what} has {model.num_prefix_tokens} prefix tokens but attnvis identified {names}")
    return _prefix_layout(names, grid)


def timm_preprocess(model: nn.Module, size: tuple[int, int]) -> Preprocess:
    """Eval preprocessing from timm's ``resolve_data_config`` (resize short side, center-crop)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
                      crop_pct=float(cfg.get("crop_pct", 1.0)), resize_short=True)


# ---------------------------------------------------------------- torchvision

def load_torchvision(name: str, weights: str | None = None,
                     image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A torchvision ViT (``vit_b_16`` ...), random weights or ``weights`` (local state dict).

    Its ``nn.MultiheadAttention`` layers are captured by the registry's MHA
    adapter. torchvision ViTs take square inputs of one fixed size.

    Raises:
        InputError: unknown name, non-square size or missing weights file.
        ModelError: not a torchvision ``VisionTransformer`` or the weights do not fit.
    """
    _import("torchvision", "timm")
    from torchvision import models
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if name not in models.list_models():
        raise InputError(f"torchvision has no model {name!r}; its ViTs: {', '.join(models.list_models(include='vit_*'))}")
    size = _size2(image_size)
    if size is not None and size[0] != size[1]:
        raise InputError(f"torchvision ViTs take square inputs; got image size {size[0]}x{size[1]}")
    model = models.get_model(name, weights=None, **({} if size is None else {"image_size": size[0]}))
    what = f"torchvision model {name!r} ({type(model).__name__})"
    _reject_windowed(model, what)
    if not isinstance(model, VisionTransformer):
        raise ModelError(f"{what} is not a VisionTransformer; attnvis supports torchvision's vit_* models")
    if weights is not None:
        state = read_state_dict(weights)
        if state.get("encoder.pos_embedding", model.encoder.pos_embedding).shape != model.encoder.pos_embedding.shape:
            state = interpolate_embeddings(model.image_size, model.patch_size, state)
        load_weights(model, state, what)
    size = (model.image_size, model.image_size)
    layout = _prefix_layout(["cls"], conv_grid(model.conv_proj, size))
    source = ModelSource(model.eval(), example_inputs(size), layout, torchvision_preprocess(name, size),
                         f"torchvision:{name}")
    check_layout(source)
    return source


def torchvision_preprocess(name: str, size: tuple[int, int]) -> Preprocess:
    """The DEFAULT weights' eval transforms (no download: they are metadata), kept in ratio for other sizes."""
    from torchvision.models import get_model_weights

    transforms = get_model_weights(name).DEFAULT.transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return Preprocess(size=size, mean=tuple(transforms.mean), std=tuple(transforms.std),
                      interpolation=transforms.interpolation.value, crop_pct=crop / resize, resize_short=True)


# ---------------------------------------------------------------- Hugging Face

class _Interpolating(nn.Module):
    """Calls a HF vision model with ``interpolate_pos_encoding=True`` (inputs off its trained size)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)


def load_hf(path: str | Path, image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A Hugging Face vision model from a local directory (``from_pretrained``, eager attention).

    Args:
        path: directory with ``config.json`` and the weights
            (``save_pretrained`` output or a downloaded snapshot).
        image_size: input (height, width); default: the image processor's
            output size, else the config's ``image_size``.

    Raises:
        InputError: the directory holds no Hugging Face config.
        ModelError: a model type attnvis does not support (windowed
            attention such as Swin included), or the weights cannot be loaded.
    """
    _import("transformers", "hf")
    path = Path(path)
    config = _hf_config(path)
    model = _hf_model(path, config)
    vision = getattr(model.config, "vision_config", model.config)
    what = f"Hugging Face model {path} ({type(model).__name__})"
    pre = hf_preprocess(path, _size2(getattr(vision, "image_size", 224)), image_size)
    if pre.size != _size2(getattr(vision, "image_size", 224)) and _takes_interpolate(model):
        model = _Interpolating(model)
    source = ModelSource(model.eval(), example_inputs(pre.size), hf_layout(model, pre.size, what), pre, str(path))
    check_layout(source)
    return source


def _hf_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise ModelError(f"{path}/config.json cannot be read by transformers: {err}") from None
    kind = f"model_type {config.model_type!r} ({', '.join(config.architectures or []) or 'no architectures'})"
    if "swin" in config.model_type or hasattr(config, "window_size"):
        raise ModelError(f"{path}: {kind} uses windowed attention: each map covers one local window, not the "
                         "image, and attnvis does not stitch windows; use a global-attention ViT "
                         f"({', '.join(HF_MODEL_TYPES)})")
    if config.model_type not in HF_MODEL_TYPES:
        raise ModelError(f"{path}: {kind} is not a supported vision transformer; supported model types: "
                         f"{', '.join(HF_MODEL_TYPES)}")
    return config


def _hf_model(path: Path, config) -> nn.Module:
    """The architecture the config names (CLIP: its vision tower), eager attention."""
    import transformers

    arch = (config.architectures or [""])[0]
    if config.model_type == "clip" or arch == "CLIPModel":
        cls = transformers.CLIPVisionModelWithProjection if "Projection" in arch else transformers.CLIPVisionModel
    else:
        cls = getattr(transformers, arch, None) or transformers.AutoModel
    with _quiet_transformers():
        try:
            return cls.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelError(f"{path}: cannot load {cls.__name__}: {err}") from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars, and no list of every unused text weight when CLIP's vision tower is loaded."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _takes_interpolate(model: nn.Module) -> bool:
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


def hf_layout(model: nn.Module, size: tuple[int, int], what: str = "Hugging Face model") -> TokenLayout:
    """Prefix tokens from the embedding parameters, grid from the patch convolution.

    Order as the embeddings concatenate them: CLS, distillation, registers.
    """
    params = dict(model.named_parameters())
    count = {"cls": 0, "dist": 0, "reg": 0}
    for key, param in params.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "class_embedding"):
            count["cls"] = 1
        elif leaf == "distillation_token":
            count["dist"] = 1
        elif leaf == "register_tokens":
            count["reg"] = param.shape[1]
    names = ["cls"] * count["cls"] + ["dist"] * count["dist"] + [f"reg{i}" for i in range(count["reg"])]
    conv = next((m for n, m in model.named_modules() if "embedding" in n and isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ModelError(f"{what} has no patch-embedding convolution; attnvis cannot place its tokens on the image")
    return _prefix_layout(names, conv_grid(conv, size))


def hf_preprocess(path: Path, model_size: tuple[int, int] | None, image_size=None) -> Preprocess:
    """Preprocessing from ``preprocessor_config.json``; without one, a plain resize to the model's size."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        warnings.warn(f"{path} has no preprocessor_config.json: images are resized to the model's input size and "
                      "normalized with mean=std=0.5", stacklevel=3)
        return Preprocess(size=_size2(image_size) or model_size or (224, 224))
    cfg = json.loads(file.read_text())
    resize, short = _hf_size(cfg.get("size"), model_size)
    crop = _hf_size(cfg.get("crop_size"), None)[0] if cfg.get("do_center_crop") else None
    out = _size2(image_size) or crop or resize
    normalize = cfg.get("do_normalize", True)
    return Preprocess(
        size=out,
        mean=tuple(cfg.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
        std=tuple(cfg.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
        interpolation=_PIL_RESAMPLE.get(cfg.get("resample", 2), "bilinear"),
        crop_pct=1.0 if crop is None else min(crop) / min(resize),
        resize_short=short or crop is not None,
        scale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
    )


def _hf_size(size: dict | int | None, fallback: tuple[int, int] | None) -> tuple[tuple[int, int], bool]:
    """HF size dict → ((h, w), keeps-aspect). ``shortest_edge`` keeps the aspect ratio."""
    if isinstance(size, int):
        return (size, size), True
    if isinstance(size, dict) and "height" in size:
        return (int(size["height"]), int(size["width"])), False
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        return (edge, edge), True
    return fallback or (224, 224), False
