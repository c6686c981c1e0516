"""Decoder-only vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3/SmolVLM, PaliGemma) from a local directory.

The image becomes tokens in the language model's own sequence; where a
generated word looked is its self-attention row over those positions.
:class:`VLMCaptioner` formats the prompt with the model's own processor
(its chat template), lets ``generate(do_sample=False)`` pick the tokens and
records, per layer, only the generated tokens' rows (:mod:`._rows`): the
prompt pass's last position for the first token, each step's single query
after it. :mod:`.vlm_tiles` says where each image token lies on the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnvis._optional import require
from attnvis.captioning import _rows
from attnvis.captioning.hf_decoding import cut
from attnvis.captioning.inputs import as_images, check_beam_size
from attnvis.captioning.kinds import VLM_TYPES, read_config, supported_models
from attnvis.captioning.result import VLMCaption
from attnvis.captioning.vlm_tiles import image_tiles
from attnvis.errors import InputError, ModelError

DEFAULT_PROMPT = "Describe the image."
DEFAULT_MAX_NEW_TOKENS = 40
#: Families whose model card gives a plain prompt instead of a chat template (PaliGemma: ``"<image>" * n + prefix``).
_PLAIN_PROMPT = {"paligemma"}


@dataclass
class VLMModel:
    """A loaded vision-language model.

    Attributes:
        model: the whole model, language-model attention through :data:`._rows.ROWS` (``sdpa`` + rows).
        kind: a :data:`~attnvis.captioning.kinds.VLM_TYPES` key.
        processor: its processor (image processor, tokenizer, chat template).
        image_token: the id of the image placeholder token in ``input_ids``.
        eos: end tokens; ``pad``: written after them.
        path: the directory.
    """

    model: nn.Module
    kind: str
    processor: Any
    image_token: int
    eos: list[int]
    pad: int
    path: Path

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def attention_modules(self) -> list[nn.Module]:
        """The language model's self-attention modules, layer 0 first."""
        inner = self.model.model
        lm = getattr(inner, "language_model", None) or getattr(inner, "text_model")
        return [layer.self_attn for layer in lm.layers]

    def prompt_text(self, prompt: str) -> str:
        """The text the processor tokenizes: the chat template applied, or PaliGemma's plain prefix."""
        if self.kind in _PLAIN_PROMPT:
            return prompt
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(message, add_generation_prompt=True)

    def inputs(self, images: list[np.ndarray], prompt: str) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``images``, each with ``prompt``, left-padded to one length."""
        text = self.prompt_text(prompt)
        try:
            out = self.processor(images=[[im] for im in images], text=[text] * len(images), return_tensors="pt",
                                 padding=True, padding_side="left", input_data_format="channels_last")
        except (ValueError, TypeError, RuntimeError, KeyError, IndexError) as err:
            raise InputError(f"{self.path}: its processor refused the image(s): {str(err).splitlines()[0]}") from None
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


class VLMCaptioner:
    """Images and a prompt in; the answer and each generated token's attention rows out.

    Build it with :func:`~attnvis.captioning.load.load_captioner`. ``backend="torch"`` runs ``generate``
    with the rows recorded beside ``sdpa``; ``backend="onnx"`` (LLaVA) runs :class:`.vlm_onnx.OnnxVLM`.
    """

    def __init__(self, vlm: VLMModel, backend: str = "torch", step: Any = None) -> None:
        self.model = vlm
        self.backend = backend
        self.step_backend = step  # backend "onnx": an OnnxVLM
        self.name = str(vlm.path)

    def caption(self, images, prompt: str | None = None, max_new_tokens: int | None = None,
                beam_size: int = 1) -> list[VLMCaption]:
        """Answer ``prompt`` about each image (file paths or RGB uint8 arrays), greedily.

        Args:
            images: one image or a list.
            prompt: the user's text (default :data:`DEFAULT_PROMPT`), formatted by the model's processor.
            max_new_tokens: the most tokens to generate (default: the generation config's, else 40).
            beam_size: 1 (greedy search; the only search these rows are defined for here).

        Returns:
            One :class:`~attnvis.captioning.result.VLMCaption` per image, in order.
        """
        if check_beam_size(beam_size) != 1:
            raise InputError(f"vision-language models decode greedily here: --beam-size must be 1, got {beam_size}")
        prompt = DEFAULT_PROMPT if prompt is None else str(prompt)
        if not prompt.strip():
            raise InputError("--prompt is empty: give the question or instruction, e.g. 'Describe the image.'")
        new = _max_new_tokens(self.model.model, max_new_tokens)
        arrays = as_images(images)
        if not arrays:
            return []
        inputs = self.model.inputs(arrays, prompt)
        if self.backend == "onnx":
            ids, steps = self.step_backend.generate(self.model, inputs, new)
        else:
            ids, steps = generate_rows(self.model, inputs, new)
        return [self._result(b, arrays[b], inputs, ids[b], steps) for b in range(len(arrays))]

    def _result(self, b: int, image: np.ndarray, inputs: dict, row: list[int], steps: list[np.ndarray]) -> VLMCaption:
        m = self.model
        prompt_ids = inputs["input_ids"][b].cpu()
        valid = inputs["attention_mask"][b].cpu().bool()
        is_image = prompt_ids == m.image_token
        image_pos = torch.nonzero(is_image & valid)[:, 0].numpy()
        text_pos = torch.nonzero(~is_image & valid)[:, 0].numpy()
        n, count = prompt_ids.numel(), len(row)
        text_pos = np.concatenate([text_pos, np.arange(n, n + max(count - 1, 0))])
        first = steps[0] if steps else np.zeros((0, 0, 0, 0), np.float32)
        layers, heads = first.shape[0], first.shape[2]
        img = np.zeros((count, layers, heads, image_pos.size), np.float32)
        txt = np.zeros((count, layers, heads, text_pos.size), np.float32)
        for t in range(count):
            step = steps[t][:, b]  # (layers, heads, n + t)
            img[t] = step[..., image_pos]
            visible = text_pos[text_pos < n + t]
            txt[t, ..., :visible.size] = step[..., visible]
        tiles = image_tiles(m, inputs, b, image.shape[:2], image_pos.size)
        special = set(m.tokenizer.all_special_ids) | set(m.eos) | {m.pad}
        return VLMCaption(token_ids=np.asarray(row, dtype=np.int64), words=_words(m.tokenizer, row),
                          sentence=m.tokenizer.decode(row, skip_special_tokens=True).strip(), image_attention=img,
                          image_grid=[t.grid for t in tiles], text_attention=txt, tiles=tiles,
                          special=np.array([t in special for t in row], dtype=bool))


@torch.no_grad()
def generate_rows(m: VLMModel, inputs: dict, max_new_tokens: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """``generate(do_sample=False)``'s tokens per row (cut after the end token) and, per step, the rows
    ``(layers, B, heads, keys)`` float32 with which that step's token was chosen."""
    with _rows.RowRecorder(m.attention_modules()) as rec:
        ends = {"eos_token_id": m.eos} if m.eos else {}
        ends.update({"pad_token_id": m.pad} if m.pad >= 0 else {})
        out = m.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, **ends)
    n = inputs["input_ids"].shape[1]
    ids = [cut(r, m.eos) for r in out[:, n:].tolist()]
    steps = [torch.stack(s).cpu().numpy() for s in rec.steps]
    return ids, steps


def _words(tokenizer, row: list[int]) -> list[str]:
    return [tokenizer.decode([t]).strip() or tokenizer.convert_ids_to_tokens(t) for t in row]


def _max_new_tokens(model: nn.Module, value: int | None) -> int:
    if value is None:
        value = getattr(model.generation_config, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {value!r}")
    return value


# --- loading ------------------------------------------------------------------------------------------


def load_vlm(path: str | Path, device: str = "cpu") -> VLMModel:
    """Load a VLM directory (``save_pretrained`` output or a downloaded snapshot).

    Raises:
        InputError: no processor, tokenizer or chat template.
        ModelError: not a supported VLM, or the weights do not load.
    """
    require("transformers", "a vision-language model")
    from attnvis.runtime.device import torch_device

    path = Path(path)
    kind = read_config(path).get("model_type")
    if kind not in VLM_TYPES:
        raise ModelError(f"{path}: model_type {kind!r} is not a supported vision-language model; supported: "
                         + supported_models())
    processor = _processor(path, kind)
    model = _load_model(path, kind).to(torch_device(device))
    config = model.config
    image_token = _first(getattr(config, "image_token_id", None), getattr(config, "image_token_index", None))
    if image_token is None:
        raise ModelError(f"{path}: its config names no image token (image_token_id)")
    gen = model.generation_config
    eos = _first(gen.eos_token_id, getattr(config.get_text_config(), "eos_token_id", None))
    eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = _first(gen.pad_token_id, processor.tokenizer.pad_token_id, eos[0] if eos else None)
    return VLMModel(model, kind, processor, int(image_token), eos, -1 if pad is None else int(pad), path)


def _load_model(path: Path, kind: str) -> nn.Module:
    import transformers

    from attnvis.sources.hf import _quiet_transformers

    cls = getattr(transformers, VLM_TYPES[kind])
    with _quiet_transformers():
        try:
            model = cls.from_pretrained(path, local_files_only=True, attn_implementation=_rows.register())
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ModelError(f"{path}: cannot load {cls.__name__}: {str(err).splitlines()[0]}") from None
    return model.eval()


def _processor(path: Path, kind: str):
    from transformers import AutoProcessor

    if not any((path / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        raise InputError(f"{path}: no processor (processor_config.json or preprocessor_config.json); save it "
                         "beside the model with processor.save_pretrained(DIR)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise InputError(f"{path}: no tokenizer (tokenizer.json); save the processor with its tokenizer beside the "
                         "model with processor.save_pretrained(DIR)")
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as err:  # e.g. SmolVLM's processor needs num2words
        raise InputError(f"{path}: its processor needs a package that is not installed: "
                         f"{str(err).splitlines()[0]}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: cannot load its processor: {str(err).splitlines()[0]}") from None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise InputError(f"{path}: its processor has no tokenizer or no image processor; save the model's own "
                         "processor with processor.save_pretrained(DIR)")
    if kind not in _PLAIN_PROMPT and not getattr(processor, "chat_template", None):
        raise InputError(f"{path}: its processor has no chat template (chat_template.jinja); save the model's own "
                         "processor, with its chat template, beside the model")
    return processor


def _first(*values):
    return next((v for v in values if v is not None), None)
