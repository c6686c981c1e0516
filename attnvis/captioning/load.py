"""``load_captioner``: one entry point for every captioner attnvis knows.

- a Hugging Face directory of a ``VisionEncoderDecoderModel`` or a
  ``BlipForConditionalGeneration`` (:class:`HFCaptioner`);
- an AoANet ``model.pth`` with its ``infos_path`` (:class:`~attnvis.captioning.aoanet_images.AoAImageCaptioner`);
- ``"default-captioner"``: the embedded tiny AoANet captioner;
- a Hugging Face directory of a decoder-only vision-language model (LLaVA,
  Qwen2-VL, Qwen2.5-VL, Idefics3/SmolVLM, PaliGemma:
  :class:`~attnvis.captioning.vlm.VLMCaptioner`; ``caption`` takes a ``prompt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnvis.captioning import hf_decoding
from attnvis.captioning.aoanet_images import DEFAULT_CAPTIONER, load_aoanet_images
from attnvis.captioning.hf import HFCaptionModel, load_hf_captioner
from attnvis.captioning.kinds import VLM_TYPES, is_captioner_dir, read_config
from attnvis.captioning.inputs import as_images, check_beam_size, check_max_new_tokens
from attnvis.captioning.result import ImageCaption
from attnvis.errors import InputError

BACKENDS = ("onnx", "torch")


class HFCaptioner:
    """A Hugging Face captioner: images in, captions and per-word cross-attention out.

    Build it with :func:`load_captioner`. ``backend="torch"`` runs
    ``generate`` and one teacher-forced eager pass; ``backend="onnx"`` runs the
    exported encoder and decoder step with ONNX Runtime, many images at once.
    """

    def __init__(self, model: HFCaptionModel, backend: str = "torch", step: Any = None) -> None:
        self.model = model
        self.backend = backend
        self.step_backend = step
        self.tokens = model.tokens
        self.name = str(model.path)

    def caption(self, images, beam_size: int = 1, max_new_tokens: int | None = None) -> list[ImageCaption]:
        """Caption images (file paths or RGB uint8 arrays).

        Args:
            images: one image or a list.
            beam_size: 1 for greedy search, else beam search with this many beams.
            max_new_tokens: tokens after the start token (default: the model's generation config).

        Returns:
            One :class:`ImageCaption` per image, in order.
        """
        check_beam_size(beam_size, self.vocab_size)
        new = check_max_new_tokens(max_new_tokens) or self.model.generation.max_new_tokens
        arrays = as_images(images)
        if not arrays:
            return []
        pixel_values = self.model.pixel_values(arrays)
        rows, maps = self._decode(pixel_values, beam_size, new)
        return [self._result(r, m) for r, m in zip(rows, maps)]

    @property
    def vocab_size(self) -> int:
        """Tokens the decoder chooses from: the largest beam size."""
        head = self.model.model.get_output_embeddings()  # the decoder's scores: one per token it can choose
        return int(getattr(head, "out_features", 0) or len(self.model.tokenizer))

    def _decode(self, pixel_values: torch.Tensor, beam_size: int, new: int):
        if self.backend == "torch":
            rows = hf_decoding.torch_generate(self.model, pixel_values, beam_size, new)
            return rows, hf_decoding.teacher_forced_cross_attention(self.model, pixel_values, rows)
        step, gen, batch = self.step_backend, self.model.generation, pixel_values.shape[0]
        encoded = step.encode(pixel_values)
        if beam_size == 1:
            return hf_decoding.greedy_search(step, encoded, batch, gen, new)
        rows = hf_decoding.beam_search(step, encoded, batch, beam_size, gen, new)
        return rows, hf_decoding.replay(step, encoded, gen, rows)

    def _result(self, row: list[int], maps: np.ndarray) -> ImageCaption:
        special = set(self.model.tokenizer.all_special_ids) | set(self.model.generation.eos) | {self.model.generation.pad}
        return ImageCaption(token_ids=np.asarray(row, dtype=np.int64), words=self.model.words(row),
                            sentence=self.model.sentence(row), cross_attention=maps.astype(np.float32, copy=False),
                            tokens=self.tokens, special=np.array([t in special for t in row], dtype=bool))


def load_captioner(model: str | Path, backend: str = "onnx", device: str = "auto",
                   infos_path: str | Path | None = None, **features: Any):
    """Load a captioner.

    Args:
        model: a Hugging Face captioner directory, an AoANet ``model.pth``
            (with ``infos_path``) or ``"default-captioner"``.
        backend: ``"onnx"`` (ONNX Runtime) or ``"torch"`` (eager PyTorch).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (an error when CUDA is not usable).
        infos_path: AoANet's ``infos_*.pkl`` (a pickle: load only files you trust).
        **features: AoANet only, where the features of each image come from:
            ``att_feats_dir``, ``fc_feats_dir``, ``boxes_dir`` or ``backbone_weights``.

    Returns:
        An object with ``caption(images, beam_size=1, max_new_tokens=None)`` (a VLM's also takes ``prompt``).

    Raises:
        InputError: a bad argument, a missing file, tokenizer or image processor.
        ModelError: a directory that is not a supported captioner.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from attnvis.runtime.device import check_device

    check_device(device)
    if str(model) == DEFAULT_CAPTIONER or infos_path is not None:
        return load_aoanet_images(model, infos_path, backend=backend, device=device, **features)
    if features:
        raise InputError(f"{', '.join(sorted(features))}: only AoANet captioners (model.pth with --infos_path) "
                         "read feature files")
    path = Path(model)
    if not path.is_dir():
        raise InputError(f"captioner {model!r} not found: give a Hugging Face captioner directory, "
                         f"an AoANet model.pth with infos_path, or {DEFAULT_CAPTIONER!r}")
    if not is_captioner_dir(path) and read_config(path).get("model_type") is None:
        raise InputError(f"{path}: not a Hugging Face model directory (no readable config.json with a model_type)")
    if read_config(path).get("model_type") in VLM_TYPES:
        return _load_vlm(path, backend, device)
    hf = load_hf_captioner(path, device=device)
    if backend == "torch":
        return HFCaptioner(hf, "torch")
    from attnvis.captioning.hf_export import onnx_step_backend

    if hf.generation.unsupported:
        from attnvis.errors import ModelError

        raise ModelError(f"{path}: its generation config sets {', '.join(sorted(hf.generation.unsupported))}, which "
                         "the onnx backend does not apply; use backend='torch' (--backend torch)")

    return HFCaptioner(hf, "onnx", onnx_step_backend(hf, device=device))



def _load_vlm(path: Path, backend: str, device: str):
    from attnvis.captioning.vlm import VLMCaptioner, load_vlm

    vlm = load_vlm(path, device=device)
    if backend == "torch":
        return VLMCaptioner(vlm, "torch")
    from attnvis.captioning.vlm_onnx import onnx_vlm_backend

    return VLMCaptioner(vlm, "onnx", onnx_vlm_backend(vlm, device=device))
