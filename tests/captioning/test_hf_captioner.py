"""Hugging Face captioners (VisionEncoderDecoder ViT + GPT-2, BLIP): tokens vs ``generate``, maps vs eager attention.

The oracles are Hugging Face's own ``generate(do_sample=False, num_beams=b,
max_new_tokens=n)`` and a teacher-forced eager forward pass with
``output_attentions=True``; the models are tiny, random and built here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from attnvis.captioning.load import load_captioner  # noqa: E402
from attnvis.errors import InputError, ModelError  # noqa: E402

WORDS = "a the red circle blue square and on dog cat left right big small".split()
NEW = 8


def _tokenizer(specials: list[str], **names):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return len(vocab), PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **names)


def _boost_eos(embedding: torch.nn.Embedding, eos: int) -> None:
    with torch.no_grad():  # tied output embedding: some captions end before max_new_tokens
        embedding.weight[eos] *= 3.5


def make_ved(path, init: float = 0.2):
    """ViT encoder + GPT-2 decoder with cross-attention, random weights, word-level tokenizer."""
    from transformers import (GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    n, tok = _tokenizer(["[PAD]", "[BOS]", "[EOS]", "[UNK]"], pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]")
    enc = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, initializer_range=init)
    dec = GPT2Config(vocab_size=n, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=init,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(cfg).eval()
    model.generation_config.decoder_start_token_id = 1
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    _boost_eos(model.decoder.transformer.wte, 2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def make_blip(path, init: float = 0.2):
    """BLIP with a 2-layer vision tower and text decoder, random weights, word-level tokenizer."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    n, tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"], pad_token="[PAD]",
                        bos_token="[DEC]", eos_token="[SEP]", sep_token="[SEP]", cls_token="[CLS]",
                        mask_token="[MASK]")
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, initializer_range=init)
    text = dict(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                initializer_range=init, encoder_hidden_size=32, max_position_embeddings=64, bos_token_id=5,
                sep_token_id=3, pad_token_id=0, eos_token_id=3)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text)).eval()
    _boost_eos(model.text_decoder.bert.embeddings.word_embeddings, 3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_captioners")
    return {"ved": str(make_ved(root / "ved")), "blip": str(make_blip(root / "blip"))}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) for i in range(5)]


@pytest.fixture(scope="module")
def captioners(dirs):
    """``(kind, backend)`` → captioner; the ONNX export (validated) runs once per model."""
    return {(k, b): load_captioner(d, backend=b, device="cpu") for k, d in dirs.items() for b in ("torch", "onnx")}


def _oracle(cap, images, beam: int):
    """Hugging Face ``generate`` and a teacher-forced eager pass with ``output_attentions=True``."""
    m = cap.model
    hf = m.model
    pixels = m.processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        seqs = hf.generate(pixel_values=pixels, do_sample=False, num_beams=beam, max_new_tokens=NEW)
        if m.kind == "blip":
            states = hf.vision_model(pixel_values=pixels)[0]
            out = hf.text_decoder(input_ids=seqs, encoder_hidden_states=states, output_attentions=True)
        else:
            out = hf(pixel_values=pixels, decoder_input_ids=seqs, output_attentions=True)
    maps = torch.stack(out.cross_attentions, 1).permute(0, 3, 1, 2, 4).numpy()  # (B, T+1, layers, heads, K)
    eos = hf.config.text_config.sep_token_id if m.kind == "blip" else hf.generation_config.eos_token_id
    result = []
    for b, row in enumerate(seqs.tolist()):
        ids = row[1:]
        if eos in ids:
            ids = ids[:ids.index(eos) + 1]
        result.append((ids, maps[b, :len(ids)]))
    return result


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", ["ved", "blip"])
@pytest.mark.parametrize("beam", [1, 3])
def test_tokens_and_maps_match_generate_and_eager_attention(captioners, images, kind, backend, beam):
    cap = captioners[(kind, backend)]
    got = cap.caption(images, beam_size=beam, max_new_tokens=NEW)
    want = _oracle(cap, images, beam)
    assert len(got) == len(images)
    for g, (ids, maps) in zip(got, want):
        assert g.token_ids.tolist() == ids
        assert g.cross_attention.dtype == np.float32
        assert g.cross_attention.shape == (len(ids), 2, 4, 17)  # 1 CLS + 4x4 patches
        np.testing.assert_allclose(g.cross_attention, maps, atol=1e-5, rtol=0)
        assert len(g.words) == len(ids)


def test_captions_are_not_degenerate(captioners, images):
    """The oracle comparison means something only if captions differ and some end early."""
    for kind in ("ved", "blip"):
        got = captioners[(kind, "torch")].caption(images, max_new_tokens=NEW)
        assert len({tuple(g.token_ids.tolist()) for g in got}) > 1
        assert any(len(g.token_ids) < NEW for g in got)


def test_onnx_batch_equals_one_at_a_time(captioners, images):
    cap = captioners[("ved", "onnx")]
    batch = cap.caption(images, beam_size=3, max_new_tokens=NEW)
    for image, whole in zip(images, batch):
        (one,) = cap.caption(image, beam_size=3, max_new_tokens=NEW)
        assert one.token_ids.tolist() == whole.token_ids.tolist()
        np.testing.assert_allclose(one.cross_attention, whole.cross_attention, atol=1e-6)


def test_words_and_sentence(captioners, images):
    (res,) = captioners[("ved", "torch")].caption(images[:1], max_new_tokens=NEW)
    words = [w for w, s in zip(res.words, res.special) if not s]
    assert res.sentence == " ".join(words)
    assert all(w in WORDS for w in words)


def test_beam_size_zero_is_one_line(captioners, images):
    with pytest.raises(InputError, match="beam-size must be a positive integer"):
        captioners[("ved", "torch")].caption(images[:1], beam_size=0)


def test_not_a_captioner_says_what_it_is(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"model_type 'vit'.*not a supported captioner.*VisionEncoderDecoderModel"):
        load_captioner(str(tmp_path), backend="torch", device="cpu")


def test_missing_tokenizer_is_one_line(dirs, tmp_path):
    import shutil

    copy = tmp_path / "ved"
    shutil.copytree(dirs["ved"], copy)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no tokenizer"):
        load_captioner(str(copy), backend="torch", device="cpu")


def test_visualize_cli_writes_a_file_per_word(dirs, images, tmp_path, captioners):
    import cv2

    from attnvis.cli import main

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    out = tmp_path / "vis"
    code = main(["visualize", "--image", str(image), "--model", dirs["ved"], "--output", str(out), "--device", "cpu",
                 "--backend", "torch", "--layer", "1", "--head", "2"])
    assert code == 0
    (cap,) = captioners[("ved", "torch")].caption([images[0]])
    want = {f"word_{t}_{cap.words[t]}.png" for t in cap.word_indices()}
    assert want and {p.name for p in out.glob("word_*.png")} == want
    assert (out / "caption_strip.png").is_file()
    assert main(["visualize", "--image", str(image), "--model", dirs["ved"], "--output", str(out), "--device", "cpu",
                 "--backend", "torch", "--layer", "5"]) != 0
