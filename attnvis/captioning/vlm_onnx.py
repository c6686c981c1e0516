"""The ONNX Runtime backend of LLaVA: greedy search for many images at once, rows as graph outputs.

``vision.onnx`` once per batch; the prompt's embeddings (the image features
put where the processor wrote image tokens, as ``masked_scatter`` does) go
through ``decoder_step.onnx`` once; then one step per token for all rows,
each row stopping at its end token as ``generate(do_sample=False)`` does.
The graphs are exported (and validated) on first use into the attnvis cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnvis.captioning.hf_decoding import cut
from attnvis.captioning.vlm_export import EMBED_FILE, STEP_FILE, VISION_FILE, export_llava
from attnvis.errors import InputError
from attnvis.runtime.device import ort_session


class OnnxVLM:
    """``vision.onnx`` + ``decoder_step.onnx`` + the token embedding table."""

    def __init__(self, directory: str | Path, device: str = "cpu") -> None:
        d = Path(directory)
        self.vision = ort_session(d / VISION_FILE, device)
        self.step = ort_session(d / STEP_FILE, device)
        self.embed = np.load(d / EMBED_FILE)

    def generate(self, m, inputs: dict, max_new_tokens: int) -> tuple[list[list[int]], list[np.ndarray]]:
        """Greedy ids per row (cut after the end token) and per step the rows ``(layers, B, heads, keys)``."""
        ids = inputs["input_ids"].cpu().numpy()
        mask = inputs["attention_mask"].cpu().numpy().astype(np.int64)
        feats = self.vision.run(None, {"pixel_values": inputs["pixel_values"].cpu().numpy().astype(np.float32)})[0]
        embeds = self.embed[ids]
        slots = ids == m.image_token
        if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
            raise InputError(f"{m.path}: {int(slots.sum())} image tokens in the prompt, {feats.shape[0] * feats.shape[1]} "
                             "image features")
        embeds[slots] = feats.reshape(-1, feats.shape[-1])  # row-major, as masked_scatter fills them
        positions = np.maximum(np.cumsum(mask, 1) - 1, 0)  # left padding: generate's positions
        layers, kv, dim = self._cache_shape()
        past = np.zeros((layers, ids.shape[0], kv, 0, dim), np.float32)
        state = (past, past)
        eos = np.array(m.eos or [-1])
        done = np.zeros(ids.shape[0], bool)
        tokens, steps = [], []
        for _ in range(max_new_tokens):
            logits, pk, pv, rows = self.step.run(None, {"inputs_embeds": embeds.astype(np.float32), "attention_mask": mask,
                                                         "position_ids": positions, "past_keys": state[0],
                                                         "past_values": state[1]})
            steps.append(rows.transpose(1, 0, 2, 3))
            nxt = np.where(done, m.pad, logits.argmax(-1))
            tokens.append(nxt)
            done |= np.isin(nxt, eos)
            if done.all():
                break
            state, embeds = (pk, pv), self.embed[nxt][:, None]
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
            positions = positions[:, -1:] + 1
        rows_out = [cut(r, m.eos) for r in np.stack(tokens, 1).tolist()]
        return rows_out, steps

    def _cache_shape(self) -> tuple[int, int, int]:
        shape = {i.name: i.shape for i in self.step.get_inputs()}["past_keys"]
        return int(shape[0]), int(shape[2]), int(shape[4])


def onnx_vlm_backend(m, device: str = "auto") -> OnnxVLM:
    """The ONNX Runtime backend for a LLaVA model, exported and validated on first use (cached)."""
    from attnvis.captioning.hf_export import export_key
    from attnvis.runtime.loader import cache_dir

    out = cache_dir() / "vlms" / export_key(m.path)
    if not all((out / f).is_file() for f in (VISION_FILE, STEP_FILE, EMBED_FILE)):
        export_vlm(m, out)
    return OnnxVLM(out, device)


def export_vlm(m, output_dir: str | Path) -> list[Path]:
    """Write a LLaVA model's ``vision.onnx``, ``decoder_step.onnx`` and ``embed_tokens.npy`` into ``output_dir``
    (validated; written to a temporary folder beside it first, so nothing half-written is left).

    Raises:
        InputError: a family the onnx backend does not cover.
        ModelError: an unsupported language model, or validation past tolerance.
    """
    import shutil
    import tempfile

    if m.kind != "llava":
        raise InputError(f"{m.path}: the onnx backend covers LLaVA among the vision-language models, not "
                         f"{m.kind}; use backend='torch' (--backend torch)")
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = tuple(m.inputs([np.zeros((32, 32, 3), np.uint8)], "x")["pixel_values"].shape[-2:])
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    device = m.device
    try:
        paths = export_llava(m.model, shape, tmp, str(m.path))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        m.model.to(device)
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / p.name for p in paths]
