"""What the model loaders share: sizes, example inputs, token layouts, state dicts, the layout check."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from attnvis.errors import InputError, ModelError
from attnvis.metadata import MAX_IMAGE_SIDE, TokenLayout, size2  # noqa: F401 - size2, MAX_IMAGE_SIDE: used by every loader
from attnvis.sources.base import ModelSource

_EXAMPLE_BATCH = 2  # batch 1 would let torch.export specialise the dynamic batch axis


def no_weights_error(spec: str) -> InputError:
    """A ``timm:NAME`` / ``torchvision:NAME`` spec without weights: never random weights unasked."""
    return InputError(f"--model {spec} needs --weights FILE (a local .pth/.safetensors state dict; nothing is "
                      "downloaded), or --random-weights to run it with random weights (tests, benchmarks)")


def check_patch_multiple(size: tuple[int, int], patch: int | tuple[int, int], what: str, multiple: bool = True) -> None:
    """Refuse an input size that ``what``'s patch embedding cannot cut into whole patches, naming the smallest size.

    Raises:
        InputError: ``size`` is smaller than one patch, or (``multiple``) not a multiple of the patch.
    """
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    h, w = size
    if h < ph or w < pw:
        raise InputError(f"image size {h}x{w} is smaller than one patch of {what}: the smallest size is {ph}x{pw} "
                         f"(sizes are multiples of {ph}x{pw})")
    if multiple and (h % ph or w % pw):
        near = (max(ph, round(h / ph) * ph), max(pw, round(w / pw) * pw))
        raise InputError(f"image size {h}x{w} is not a multiple of {what}'s {ph}x{pw} patch; e.g. "
                         f"--image-size {near[0]}x{near[1]}")


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


def prefix_layout(names: list[str], grid: tuple[int, int]) -> TokenLayout:
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
    from attnvis.capture.context import capture_attention, no_maps_error

    tokens = source.tokens
    expected = tokens.prefix_tokens + (tokens.num_patches or 0)
    with capture_attention(source.model) as recorder, torch.no_grad():
        source.model(*source.example_inputs)
    if not recorder.layers:
        raise no_maps_error(source.model)
    wrong = [layer for layer in recorder.layers if layer.window is None and layer.k_len != expected]
    windowed = [layer for layer in recorder.layers if layer.window is not None]
    if windowed and windowed[0].window.grid != tokens.grid:  # Swin: the first stage's grid is the patch grid
        layer = windowed[0]
        raise ModelError(f"{source.name}: layer {layer.name} ({layer.module_type}) attends within windows of a "
                         f"{layer.window.grid} grid, but the model's layout gives a {tokens.grid} patch grid; "
                         "attnvis cannot map these tokens to the image")
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


def reject_windowed(model: nn.Module, what: str) -> None:
    """One clear error for windowed attention that no adapter captures with its layout (Swin blocks pass)."""
    from attnvis.capture.adapters.windows import has_window_blocks

    if has_window_blocks(model):
        return
    found = _windowed(model)
    if found is not None:
        raise ModelError(
            f"{what} uses windowed attention ({found}) whose windows attnvis cannot place on the image (it stitches "
            "Hugging Face swin/swinv2, timm swin_* and torchvision swin_* blocks); use one of those or a "
            "global-attention ViT (ViT, DeiT, BEiT, DINOv2, CLIP)")
