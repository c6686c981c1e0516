"""Hugging Face captioners from a local directory: ``VisionEncoderDecoderModel`` and ``BlipForConditionalGeneration``.

One :class:`HFCaptionModel` holds what both backends need: the eager model,
its tokenizer and image processor, the encoder's token layout and the
generation settings (start, end and pad tokens, lengths, beam scoring) that
``generate`` itself would use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnvis._optional import require
from attnvis.captioning.kinds import CAPTIONER_TYPES, read_config, supported_models
from attnvis.errors import InputError, ModelError
from attnvis.metadata import TokenLayout
from attnvis.sources.hf import hf_layout

#: Generation-config switches that change which token wins; the onnx backend refuses them (torch runs them).
_PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
               "bad_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
               "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
               "diversity_penalty": 0.0, "sequence_bias": None, "constraints": None, "force_words_ids": None}


@dataclass
class GenerationSettings:
    """What ``generate(do_sample=False)`` reads from the model's generation config.

    Attributes:
        start: the decoder's first token (VisionEncoderDecoder: ``decoder_start_token_id``; BLIP: ``bos``).
        eos: end tokens (generation stops after any of them).
        pad: written after the end of a finished row.
        max_new_tokens: default number of tokens after the start token.
        length_penalty: beam search divides a finished beam's score by ``length ** length_penalty``.
        early_stopping: ``True``, ``False`` or ``"never"``, as ``generate`` reads it.
        unsupported: switches set in the config that the onnx backend does not apply.
    """

    start: int
    eos: list[int]
    pad: int
    max_new_tokens: int = 20
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    unsupported: dict[str, Any] = field(default_factory=dict)


@dataclass
class HFCaptionModel:
    """A loaded Hugging Face captioner.

    Attributes:
        model: the whole model, eager attention, ``eval()``.
        kind: a :data:`CAPTIONER_TYPES` key.
        tokenizer: its tokenizer.
        processor: its image processor.
        tokens: the layout of the encoder tokens (prefix tokens, patch grid).
        generation: :class:`GenerationSettings`.
        path: the directory.
    """

    model: nn.Module
    kind: str
    tokenizer: Any
    processor: Any
    tokens: TokenLayout
    generation: GenerationSettings
    path: Path

    @property
    def decoder(self) -> nn.Module:
        """The language-model head model that cross-attends to the image."""
        return self.model.decoder if self.kind == "vision-encoder-decoder" else self.model.text_decoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → the states the decoder cross-attends to, ``(B, K, D)``."""
        if self.kind == "blip":
            return self.model.vision_model(pixel_values=pixel_values)[0]
        states = self.model.encoder(pixel_values=pixel_values)[0]
        proj = getattr(self.model, "enc_to_dec_proj", None)
        return states if proj is None else proj(states)

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images → the model's input, as its own image processor makes it."""
        return self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)

    def words(self, token_ids: list[int]) -> list[str]:
        """One readable word per token (subword markers and spaces removed)."""
        return [self.tokenizer.decode([t]).strip() or self.tokenizer.convert_ids_to_tokens(t) for t in token_ids]

    def sentence(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def load_hf_captioner(path: str | Path, device: str = "cpu") -> HFCaptionModel:
    """Load a captioner directory (``save_pretrained`` output or a downloaded snapshot).

    Raises:
        InputError: no ``config.json``, no tokenizer or no image processor config.
        ModelError: not a supported captioner, or the weights do not load.
    """
    require("transformers", "a Hugging Face captioner")
    from attnvis.runtime.device import torch_device

    path = Path(path)
    kind = _captioner_kind(path)
    model = _load_model(path, kind).to(torch_device(device))
    processor = _processor(path)
    size = _processor_size(processor, model, kind)
    encoder = model.vision_model if kind == "blip" else model.encoder
    tokens = hf_layout(encoder, size, f"captioner {path}")
    return HFCaptionModel(model, kind, _tokenizer(path), processor, tokens, generation_settings(model, kind), path)


def _captioner_kind(path: Path) -> str:
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a Hugging Face model directory (no config.json)")
    config = read_config(path)
    kind = config.get("model_type")
    if kind not in CAPTIONER_TYPES:
        arch = ", ".join(config.get("architectures") or []) or "no architectures"
        raise ModelError(f"{path}: model_type {kind!r} ({arch}) is not a supported captioner; supported: "
                         + supported_models())
    return kind


def _load_model(path: Path, kind: str) -> nn.Module:
    import transformers

    from attnvis.sources.hf import _quiet_transformers

    cls = getattr(transformers, CAPTIONER_TYPES[kind])
    with _quiet_transformers():
        try:
            model = cls.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ModelError(f"{path}: cannot load {cls.__name__}: {str(err).splitlines()[0]}") from None
    return model.eval()


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer_config.json")):
        raise InputError(f"{path}: no tokenizer (tokenizer.json, vocab.json or vocab.txt); save the tokenizer "
                         "beside the model with tokenizer.save_pretrained(DIR)")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: cannot load its tokenizer: {str(err).splitlines()[0]}") from None


def _processor(path: Path):
    from transformers import AutoImageProcessor

    if not (path / "preprocessor_config.json").is_file():
        raise InputError(f"{path}: no preprocessor_config.json; save the image processor beside the model with "
                         "image_processor.save_pretrained(DIR)")
    try:
        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: cannot load its image processor: {str(err).splitlines()[0]}") from None


def _processor_size(processor, model: nn.Module, kind: str) -> tuple[int, int]:
    """The encoder's input ``(h, w)``: the processor's crop or resize size, else the config's image size."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if isinstance(size, dict) and "height" in size:
        return int(size["height"]), int(size["width"])
    vision = model.config.vision_config if kind == "blip" else model.config.encoder
    side = getattr(vision, "image_size", 224)
    return (side, side) if isinstance(side, int) else tuple(side)


def generation_settings(model: nn.Module, kind: str) -> GenerationSettings:
    """The tokens and beam scoring ``model.generate`` uses, read as ``generate`` reads them."""
    if kind == "blip":
        text = model.config.text_config
        gen = model.text_decoder.generation_config
        start, eos, pad = text.bos_token_id, text.sep_token_id, text.pad_token_id
    else:
        gen = model.generation_config
        start = _first(gen.decoder_start_token_id, model.config.decoder_start_token_id, gen.bos_token_id)
        eos = _first(gen.eos_token_id, model.config.eos_token_id, model.config.decoder.eos_token_id)
        pad = _first(gen.pad_token_id, model.config.pad_token_id)
    if start is None:
        raise ModelError("the captioner's config names no decoder start token (decoder_start_token_id)")
    eos_list = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = eos_list[0] if pad is None and eos_list else pad
    new = gen.max_new_tokens if gen.max_new_tokens is not None else max(1, (gen.max_length or 20) - 1)
    unsupported = {k: getattr(gen, k, d) for k, d in _PROCESSORS.items() if getattr(gen, k, d) not in (d, None)}
    return GenerationSettings(int(start), eos_list, int(pad) if pad is not None else -1, int(new),
                              float(gen.length_penalty if gen.length_penalty is not None else 1.0),
                              gen.early_stopping if gen.early_stopping is not None else False, unsupported)


def _first(*values):
    return next((v for v in values if v is not None), None)
