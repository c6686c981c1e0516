"""Decoder-only VLMs: tokens vs ``generate(do_sample=False)``, rows vs eager ``output_attentions=True``.

The oracle is Hugging Face's own eager ``generate(..., output_attentions=True,
return_dict_in_generate=True)``: step ``s``'s attention of layer ``l`` is
``[B, heads, q, keys]``; the row with which token ``s`` was chosen is its last
query row. The models are tiny, random and built here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from attnvis.captioning.load import load_captioner  # noqa: E402
from attnvis.errors import InputError, ModelError  # noqa: E402
from tests.captioning import tiny_vlms  # noqa: E402

NEW = 8
PROMPT = "Describe the image."
FAMILIES = {"llava": tiny_vlms.make_llava, "qwen2_vl": tiny_vlms.make_qwen2_vl,
            "qwen2_5_vl": lambda path: tiny_vlms.make_qwen2_vl(path, version="2.5"),
            "paligemma": tiny_vlms.make_paligemma, "idefics3": tiny_vlms.make_idefics3,
            "smolvlm": lambda path: tiny_vlms.make_idefics3(path, smol=True)}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlms")
    return {kind: str(make(root / kind)) for kind, make in FAMILIES.items()}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) for i in range(5)]


@pytest.fixture(scope="module")
def captioners(dirs):
    return {kind: load_captioner(d, backend="torch", device="cpu") for kind, d in dirs.items()}


def _oracle(path, images, prompt: str = PROMPT):
    """Per image: generated ids (cut after the end token), eager rows ``(T, layers, heads, keys)`` and the prompt ids."""
    import transformers
    from transformers import AutoProcessor

    from attnvis.captioning.kinds import VLM_TYPES, read_config

    kind = read_config(path)["model_type"]
    model = getattr(transformers, VLM_TYPES[kind]).from_pretrained(path, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(path)
    if proc.chat_template:
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        prompt = proc.apply_chat_template(message, add_generation_prompt=True)
    inputs = proc(images=[[im] for im in images], text=[prompt] * len(images), return_tensors="pt", padding=True,
                  padding_side="left")
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW, output_attentions=True,
                             return_dict_in_generate=True)
    n = inputs["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    result = []
    for b in range(len(images)):
        ids = out.sequences[b, n:].tolist()
        ids = ids[:ids.index(eos) + 1] if eos in ids else ids
        rows = [np.stack([layer[b, :, -1].numpy() for layer in out.attentions[s]]) for s in range(len(ids))]
        result.append((ids, rows, inputs["input_ids"][b], inputs["attention_mask"][b], model.config))
    return result


@pytest.fixture(scope="module")
def onnx_llava(dirs):
    """LLaVA on ONNX Runtime (exported and validated once)."""
    return load_captioner(dirs["llava"], backend="onnx", device="cpu")


@pytest.mark.parametrize("kind,backend", [(k, "torch") for k in sorted(FAMILIES)] + [("llava", "onnx")])
def test_tokens_and_rows_match_generate_and_eager_attention(request, captioners, dirs, images, kind, backend):
    cap = request.getfixturevalue("onnx_llava") if backend == "onnx" else captioners[kind]
    got = cap.caption(images, prompt=PROMPT, max_new_tokens=NEW)
    want = _oracle(dirs[kind], images)
    assert len(got) == len(images)
    for g, (ids, rows, prompt_ids, mask, config) in zip(got, want):
        assert g.token_ids.tolist() == ids
        image_token = getattr(config, "image_token_id", None) or config.image_token_index
        is_image = (prompt_ids == image_token).numpy()
        valid = mask.numpy().astype(bool)
        n = prompt_ids.numel()
        assert g.image_attention.dtype == np.float32 and g.text_attention.dtype == np.float32
        assert g.image_attention.shape[:3] == (len(ids), 2, 4)
        assert g.image_attention.shape[3] == int(is_image.sum()) == sum(h * w for h, w in g.image_grid)
        text_cols = np.concatenate([np.nonzero(~is_image & valid)[0], np.arange(n, n + len(ids) - 1)])
        assert g.text_attention.shape == (len(ids), 2, 4, text_cols.size)
        for t, row in enumerate(rows):
            np.testing.assert_allclose(g.image_attention[t], row[..., :n][..., is_image], atol=1e-5, rtol=0)
            visible = text_cols[text_cols < n + t]
            np.testing.assert_allclose(g.text_attention[t, ..., :visible.size], row[..., visible], atol=1e-5, rtol=0)
            assert not g.text_attention[t, ..., visible.size:].any()
            total = g.image_attention[t].sum(-1) + g.text_attention[t].sum(-1)
            np.testing.assert_allclose(total, 1.0, atol=1e-5)  # every key the row saw is in one of the two


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_answers_are_not_degenerate(captioners, images, kind):
    """The oracle comparison means something only if answers differ and some end early."""
    got = captioners[kind].caption(images, max_new_tokens=NEW)
    assert len({tuple(g.token_ids.tolist()) for g in got}) > 1
    assert any(len(g.token_ids) < NEW for g in got)


def test_onnx_equals_torch_on_mixed_lengths(captioners, onnx_llava, images):
    """Batched greedy on ONNX Runtime: rows stop at their own end token; rows equal the torch backend's."""
    torch_caps = captioners["llava"].caption(images, prompt="what is this", max_new_tokens=12)
    onnx_caps = onnx_llava.caption(images, prompt="what is this", max_new_tokens=12)
    assert len({len(c.token_ids) for c in onnx_caps}) > 1
    for a, b in zip(torch_caps, onnx_caps):
        assert a.token_ids.tolist() == b.token_ids.tolist() and a.sentence == b.sentence
        np.testing.assert_allclose(b.image_attention, a.image_attention, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.text_attention, a.text_attention, atol=1e-5, rtol=0)
        assert b.image_grid == a.image_grid


def test_onnx_backend_of_another_family_is_one_line(dirs):
    with pytest.raises(InputError, match="onnx backend covers LLaVA.*backend='torch'"):
        load_captioner(dirs["paligemma"], backend="onnx", device="cpu")


def test_one_at_a_time_equals_the_batch(captioners, images):
    cap = captioners["llava"]
    batch = cap.caption(images[:3], max_new_tokens=NEW)
    for image, whole in zip(images[:3], batch):
        (one,) = cap.caption(image, max_new_tokens=NEW)
        assert one.token_ids.tolist() == whole.token_ids.tolist()
        np.testing.assert_allclose(one.image_attention, whole.image_attention, atol=1e-5, rtol=0)


def test_prompt_changes_the_answer_and_the_text_keys(captioners, images):
    cap = captioners["llava"]
    (a,) = cap.caption(images[:1], prompt="Describe the image.", max_new_tokens=NEW)
    (b,) = cap.caption(images[:1], prompt="what is this red circle", max_new_tokens=NEW)
    assert a.text_attention.shape[-1] - len(a.token_ids) != b.text_attention.shape[-1] - len(b.token_ids)


def test_llava_grid_is_the_centre_crop(captioners):
    """CLIP's processor keeps the central square: the tile's box is that square on the original image."""
    (res,) = captioners["llava"].caption(np.zeros((40, 80, 3), np.uint8), max_new_tokens=2)
    (tile,) = res.tiles
    assert res.image_grid == [(4, 4)] and tile.grid == (4, 4)
    np.testing.assert_allclose(tile.box, (20, 0, 60, 40), atol=1.5)


def test_not_a_vlm_names_its_model_type(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"model_type 'llama'.*not a supported.*LlavaForConditionalGeneration"):
        load_captioner(str(tmp_path), backend="torch", device="cpu")


def test_missing_chat_template_is_one_line(dirs, tmp_path):
    import shutil

    copy = tmp_path / "llava"
    shutil.copytree(dirs["llava"], copy)
    for f in copy.glob("*.jinja"):
        f.unlink()
    for name in ("processor_config.json", "tokenizer_config.json", "chat_template.json"):
        p = copy / name
        if p.is_file():
            import json

            doc = json.loads(p.read_text())
            doc.pop("chat_template", None)
            p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no chat template"):
        load_captioner(str(copy), backend="torch", device="cpu")


def test_missing_processor_is_one_line(dirs, tmp_path):
    import shutil

    copy = tmp_path / "llava"
    shutil.copytree(dirs["llava"], copy)
    for name in ("processor_config.json", "preprocessor_config.json"):
        (copy / name).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no processor"):
        load_captioner(str(copy), backend="torch", device="cpu")


def test_beam_search_is_refused_in_one_line(captioners, images):
    with pytest.raises(InputError, match="beam-size must be 1"):
        captioners["llava"].caption(images[:1], beam_size=2)


def _png(path, image):
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_visualize_prompt_writes_a_file_per_word(captioners, dirs, images, tmp_path):
    from attnvis.cli import main

    image = _png(tmp_path / "img.png", images[2])
    out = tmp_path / "vis"
    code = main(["visualize", "--image", str(image), "--model", dirs["llava"], "--output", str(out), "--device", "cpu",
                 "--backend", "torch", "--prompt", "what is this", "--layer", "1"])
    assert code == 0
    from attnvis.captioning.word_figures import safe_word

    (cap,) = captioners["llava"].caption([images[2]], prompt="what is this")
    want = {f"word_{t}_{safe_word(cap.words[t])}.png" for t in cap.word_indices()}
    assert want and {p.name for p in out.glob("word_*.png")} == want
    assert (out / "caption_strip.png").is_file()


def test_word_figure_paints_the_tile_where_the_model_looked(captioners, images):
    """The hottest token's cell is the hottest part of the overlay's heatmap; outside the crop stays unpainted."""
    from attnvis.captioning.word_figures import paint_word

    image = np.full((40, 80, 3), 128, np.uint8)
    (cap,) = captioners["llava"].caption([image], max_new_tokens=2)
    values = np.zeros(16, np.float32)
    values[6] = 1.0  # row 1, column 2 of the 4x4 grid over the centre square x 20..60
    heat, overlay = paint_word(values, image, cap)
    assert heat.shape == overlay.shape == image.shape
    assert not heat[:, :18].any() and not heat[:, 62:].any()
    cell = heat[10:20, 40:50].astype(int).sum(-1)
    far = heat[30:40, 20:30].astype(int).sum(-1)
    assert (cell != far.mean()).all()


def test_batch_prompt_writes_words_to_the_manifest(captioners, dirs, images, tmp_path):
    import json

    from attnvis.captioning.word_figures import safe_word
    from attnvis.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _png(src / f"im{i}.png", images[i])
    out = tmp_path / "out"
    code = main(["batch", str(src), "--model", dirs["llava"], "--output", str(out), "--device", "cpu", "--backend",
                 "torch", "--prompt", "Describe the image.", "--no-progress"])
    assert code == 0
    records = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    want = captioners["llava"].caption([images[i] for i in range(3)], prompt="Describe the image.")
    for i, cap in enumerate(want):
        rec = records[f"im{i}.png"]
        assert rec["status"] == "ok" and rec["caption"] == cap.sentence
        assert rec["token_ids"] == cap.token_ids.tolist()
        assert rec["words"] == [cap.words[t] for t in cap.word_indices()]
        for t in cap.word_indices():
            assert (out / f"im{i}.png" / f"word_{t}_{safe_word(cap.words[t])}.png").is_file()
        assert (out / f"im{i}.png" / "caption_strip.png").is_file()
    page = (out / "gallery" / "page_0000.js").read_text()  # the gallery's word buttons read each entry's words
    assert '"words"' in page and json.dumps(want[0].sentence.split()[0]) in page


def test_batch_of_a_family_without_onnx_runs_on_torch_by_default(captioners, dirs, images, tmp_path, capsys):
    """``--backend`` left at its default (ort) for Qwen2-VL: the torch backend runs, and says so on stderr."""
    import json

    from attnvis.cli import main

    src = tmp_path / "src"
    src.mkdir()
    _png(src / "a.png", images[1])
    out = tmp_path / "out"
    assert main(["batch", str(src), "--model", dirs["qwen2_vl"], "--output", str(out), "--device", "cpu",
                 "--prompt", "Describe the image.", "--no-progress", "--no-gallery"]) == 0
    assert "qwen2_vl has no onnx backend" in capsys.readouterr().err
    (rec,) = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    (cap,) = captioners["qwen2_vl"].caption([images[1]], prompt="Describe the image.")
    assert rec["token_ids"] == cap.token_ids.tolist()


@pytest.mark.parametrize("command", ["visualize", "batch"])
def test_prompt_on_a_model_that_is_not_a_vlm_is_one_line(tmp_path, capsys, command):
    from attnvis.cli import main

    image = _png(tmp_path / "img.png", np.zeros((32, 32, 3), np.uint8))
    args = ["--image", str(image)] if command == "visualize" else [str(image)]
    code = main([command, *args, "--model", "default-captioner", "--output", str(tmp_path / "o"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code != 0 and "--prompt applies to vision-language models" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_grid_is_the_merged_patch_grid_over_the_whole_image(captioners, dirs, kind):
    """``image_grid_thw`` counts 7-px patches; 2×2 of them make one token; the grid covers the whole image."""
    from transformers import AutoProcessor

    image = np.zeros((40, 72, 3), np.uint8)
    (res,) = captioners[kind].caption([image], max_new_tokens=2)
    thw = AutoProcessor.from_pretrained(dirs[kind]).image_processor(images=[image])["image_grid_thw"][0].tolist()
    assert res.image_grid == [(thw[1] // 2, thw[2] // 2)] and thw[2] > thw[1]
    assert res.tiles[0].box == (0.0, 0.0, 72.0, 40.0)


def test_idefics3_tiles_lie_where_the_processor_cut_them(captioners):
    """A 40x48 image grows to 112 px and is cut into 2x2 tiles of 56 px, then the global view: 5 grids of 4x4."""
    from attnvis.captioning.word_figures import paint_word

    image = np.full((40, 48, 3), 100, np.uint8)
    (res,) = captioners["idefics3"].caption([image], max_new_tokens=2)
    assert res.image_grid == [(4, 4)] * 5 and res.image_attention.shape[-1] == 80
    assert [t.thumbnail for t in res.tiles] == [False] * 4 + [True]
    np.testing.assert_allclose([t.box for t in res.tiles[:4]],
                               [(0, 0, 24, 20), (24, 0, 48, 20), (0, 20, 24, 40), (24, 20, 48, 40)])
    assert [t.start for t in res.tiles] == [0, 16, 32, 48, 64]
    values = np.zeros(80, np.float32)
    values[16 + 5] = 1.0  # tile (0, 1), token (1, 1): x 30..36, y 5..10 of the original
    heat, overlay = paint_word(values, image, res)
    assert heat.shape == (40, 2 * 48 + 6, 3)  # the tiles on the image, the global view beside it
    tiles_part = heat[:, :48].astype(int).sum(-1)
    y, x = np.unravel_index(np.argmax(tiles_part), tiles_part.shape)
    assert 24 <= x < 48 and y < 20


def test_export_cli_of_a_vlm(dirs, tmp_path, capsys):
    """``attnvis export --model LLAVA_DIR``: the two graphs and the embeddings; another family: one line."""
    from attnvis.cli import main

    out = tmp_path / "onnx"
    assert main(["export", "--model", dirs["llava"], "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"vision.onnx", "decoder_step.onnx", "embed_tokens.npy"}
    assert main(["export", "--model", dirs["qwen2_vl"], "--output", str(tmp_path / "q")]) != 0
    assert "onnx backend covers LLaVA" in capsys.readouterr().err and not (tmp_path / "q").exists()
