"""Reading AoANet checkpoints: ``infos_*.pkl`` (options, vocabulary) and ``model.pth`` (state dict)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnvis.captioning.model import AoAConfig, AoAModel
from attnvis.errors import InputError, ModelError


def read_infos(infos_path: str | Path) -> tuple[AoAConfig, dict[str, str], Any]:
    """Read an ``infos_*.pkl``: options and vocabulary.

    The file is a pickle, and unpickling runs code: only load files you trust.

    Returns:
        ``(config, vocab, opt)``.

    Raises:
        InputError: the file is missing or not a readable pickle.
        ModelError: it lacks ``opt``/``vocab`` or an option the model needs.
    """
    path = Path(infos_path)
    if not path.is_file():
        raise InputError(f"infos file not found: {path}")
    try:
        with path.open("rb") as f:
            infos = pickle.load(f, encoding="latin-1")  # Python 2-era pickles
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"--infos_path {path} is not a readable pickle ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); give the infos_*.pkl that "
                         "the AoANet training code wrote beside model.pth") from None
    if not isinstance(infos, dict) or "opt" not in infos or "vocab" not in infos:
        raise ModelError(f"{path} is not an AoANet infos file: it needs 'opt' and 'vocab' entries")
    vocab = {str(k): str(v) for k, v in infos["vocab"].items()}
    opt = infos["opt"]
    return AoAConfig.from_opt(opt), vocab, opt


def read_checkpoint(model_path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a ``model.pth`` state dict with ``weights_only=True``."""
    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Name the first key or shape where a checkpoint and the infos' options disagree."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[0]!r}"
                         + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise ModelError(f"checkpoint does not match the infos options: {'; '.join(parts)}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(f"checkpoint does not match the infos options: {key!r} has shape "
                             f"{tuple(state[key].shape)}, the options give {tuple(value.shape)}")


def build_model(infos_path: str | Path, model_path: str | Path, device: str = "cpu") -> AoAModel:
    """An :class:`AoAModel` in eval mode with the checkpoint's weights (strict)."""
    cfg, vocab, _ = read_infos(infos_path)
    model = AoAModel(cfg, vocab)
    state = read_checkpoint(model_path, device)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
