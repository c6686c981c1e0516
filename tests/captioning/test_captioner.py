"""Captioning: torch vs ONNX backends, decoding rules, visualisation files, the tiny captioner."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from attnvis.errors import InputError
from attnvis.captioning import captioner, decoding, features, figures, model as aoa, tiny
from attnvis.captioning import export as caption_export
from attnvis.cli import visualize as cli_visualize

VOCAB = {str(i): w for i, w in enumerate("a the red circle blue square and on dog cat UNK".split(), 1)}
UNK = len(VOCAB)


def make_model(seed: int = 0, **overrides) -> aoa.AoAModel:
    """A random AoANet whose captions are not trivially empty (weights scaled up)."""
    base = dict(vocab_size=len(VOCAB), input_encoding_size=16, rnn_size=16, att_hid_size=12, fc_feat_size=10,
                att_feat_size=10, drop_prob_lm=0.5, num_heads=4, multi_head_scale=1, use_multi_head=2, refine=1,
                refine_aoa=1, use_ff=1, max_length=8)
    base.update(overrides)
    torch.manual_seed(seed)
    model = aoa.AoAModel(aoa.AoAConfig(**base), VOCAB).eval()
    with torch.no_grad():
        model.logit.weight.mul_(8)
        model.logit.bias[0] -= 4.0  # make the first step's EOS unlikely
    return model


def inputs(batch: int = 3, regions: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    fc = rng.standard_normal((batch, 10)).astype(np.float32)
    att = rng.standard_normal((batch, regions, 10)).astype(np.float32)
    masks = np.ones((batch, regions), np.float32)
    masks[1, regions - 2:] = 0
    masks[2, regions // 2:] = 0
    return fc, att, masks


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same model behind both backends; the ONNX files exported (and validated) once."""
    model = make_model()
    out = tmp_path_factory.mktemp("aoanet_onnx")
    paths = caption_export.export_model(model, out, validate=True)
    onnx_cap = captioner.Captioner.from_onnx_dir(out, VOCAB, model.cfg)
    return captioner.Captioner.from_torch(model), onnx_cap, paths


@pytest.fixture(scope="module")
def torch_cap():
    return captioner.Captioner.from_torch(make_model())


def assert_same(a: captioner.CaptionResult, b: captioner.CaptionResult) -> None:
    np.testing.assert_array_equal(a.seq, b.seq)
    assert a.sentences == b.sentences
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.decoder_attention, b.decoder_attention, atol=1e-5, rtol=0)
    assert len(a.refiner_attention) == len(b.refiner_attention)
    for x, y in zip(a.refiner_attention, b.refiner_attention):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("with_masks", [False, True])
def test_torch_and_onnx_backends_agree(pair, beam, with_masks):
    torch_cap, onnx_cap, _ = pair
    fc, att, masks = inputs()
    res = torch_cap.caption(fc, att, masks if with_masks else None, beam_size=beam)
    assert_same(res, onnx_cap.caption(torch.from_numpy(fc), torch.from_numpy(att),
                                      masks if with_masks else None, beam_size=beam))
    assert res.seq.dtype == np.int64 and res.seq.shape == (3, 8)
    assert res.decoder_attention.shape == (3, 8, 4, 6)
    assert [m.shape for m in res.refiner_attention] == [(3, 4, 6, 6)] * 6
    assert any(res.sentences)


def test_exported_files_carry_metadata(pair):
    _, _, paths = pair
    assert [p.name for p in paths] == ["encoder.onnx", "decoder_step.onnx"]
    enc = onnx.load(str(paths[0]))
    props = {p.key: p.value for p in enc.metadata_props}
    layers = json.loads(props["attnvis.layers"])
    assert [layer["name"] for layer in layers] == [f"refiner.layers.{i}.self_attn" for i in range(6)]
    assert json.loads(props["attnvis.tokens"])["kind"] == "regions"
    assert json.loads(props["attnvis.extra"])["vocab"] == VOCAB
    assert [o.name for o in enc.graph.output][-6:] == [f"attn_{i}" for i in range(6)]
    dec = onnx.load(str(paths[1]))
    assert [o.name for o in dec.graph.output] == list(caption_export.DECODER_OUTPUTS)


# every option value once across the two (export is the slow part: ~10 s per model)
@pytest.mark.parametrize("overrides", [
    dict(refine=1, refine_aoa=0, use_ff=0, decoder_type="LSTM", multi_head_scale=2, mean_feats=0, ctx_drop=1),
    dict(refine=0, decoder_type="base", use_multi_head=0, ctx_drop=1),
])
def test_option_combinations_export_and_agree(tmp_path, overrides):
    model = make_model(seed=2, **overrides)
    caption_export.export_model(model, tmp_path, validate=False)
    fc, att, masks = inputs(seed=3)
    torch_cap, onnx_cap = captioner.Captioner.from_torch(model), captioner.Captioner.from_onnx_dir(tmp_path, VOCAB, model.cfg)
    for beam, m in ((1, None), (3, masks)):
        assert_same(torch_cap.caption(fc, att, m, beam_size=beam), onnx_cap.caption(fc, att, m, beam_size=beam))


def test_greedy_logprobs_match_teacher_forcing(torch_cap):
    fc, att, _ = inputs()
    res = torch_cap.caption(fc, att)
    seq = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.from_numpy(res.seq)], 1)
    with torch.no_grad():
        forced = torch_cap.backend.model(torch.from_numpy(fc), torch.from_numpy(att), seq)  # (B, T, V+1)
    chosen = forced.gather(2, torch.from_numpy(res.seq).unsqueeze(2)).squeeze(2).numpy()
    words = res.seq > 0
    np.testing.assert_allclose(res.logprobs[words], chosen[words], atol=1e-5)
    assert np.all(forced.argmax(2).numpy()[words] == res.seq[words])


def test_finished_rows_are_zero_after_the_end(torch_cap):
    res = torch_cap.caption(*inputs(batch=3)[:2])
    for b in range(3):
        zeros = np.flatnonzero(res.seq[b] == 0)
        if zeros.size:
            end = zeros[0]
            assert np.all(res.seq[b, end:] == 0)
            assert np.all(res.decoder_attention[b, end + 1:] == 0)
            np.testing.assert_allclose(res.decoder_attention[b, end].sum(-1), 1.0, atol=1e-5)


def test_beam_search_never_picks_unk_but_greedy_may():
    model = make_model()
    with torch.no_grad():
        model.logit.bias[UNK] += 50.0  # UNK dominates every step
    cap = captioner.Captioner.from_torch(model)
    fc, att, _ = inputs()
    assert np.all(cap.caption(fc, att).seq[:, 0] == UNK)
    assert not np.any(cap.caption(fc, att, beam_size=3).seq == UNK)


def test_remove_bad_endings_forbids_eos_after_them():
    logprobs = torch.zeros(3, UNK + 1)
    prev = torch.tensor([1, 3, 2])  # "a" and "the" are bad endings, "circle" is not
    opts = decoding.DecodeOptions(remove_bad_endings=True)
    blocked = decoding._block_words(logprobs, prev, opts, [1, 2])
    assert blocked[:, 0].tolist() == [float("-inf"), 0.0, float("-inf")]
    assert torch.all(blocked[:, 1:] == 0) and torch.all(logprobs == 0)  # out of place
    same = decoding._block_words(logprobs, prev, decoding.DecodeOptions(), [1, 2])
    assert torch.equal(same, logprobs)


def test_decode_sequence_as_the_reference():
    seq = np.array([[3, 7, 1, 0, 5], [0, 4, 4, 4, 4], [5, 1, 2, 0, 0]])
    assert decoding.decode_sequence(VOCAB, seq) == ["red and a", "", "blue a the"]
    assert decoding.decode_sequence(VOCAB, seq, remove_bad_endings=True) == ["red and", "", "blue"]
    assert decoding.decode_sequence({"1": "play@@", "2": "ing"}, np.array([[1, 2]])) == ["playing"]


def test_bad_inputs_raise_input_errors(torch_cap, tmp_path):
    fc, att, masks = inputs()
    with pytest.raises(InputError, match=r"att_feats must be \(B, N, 10\)"):
        torch_cap.caption(fc, att[:, :, :7])
    with pytest.raises(InputError, match="att_masks"):
        torch_cap.caption(fc, att, np.zeros_like(masks))
    with pytest.raises(InputError, match="beam_size"):
        torch_cap.caption(fc, att, beam_size=0)
    np.savez(tmp_path / "f.npz", feat=att[0])
    np.save(tmp_path / "b.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(InputError, match=r"expected \(6, 4\)"):
        features.load_region_features(tmp_path / "f.npz", tmp_path / "b.npy", 10)
    np.save(tmp_path / "b.npy", np.zeros((6, 4), np.float32))
    with pytest.raises(InputError, match="the model expects 12"):
        features.load_region_features(tmp_path / "f.npz", tmp_path / "b.npy", 12)


def test_visualize_regions_writes_every_file(tmp_path):
    import cv2

    model = make_model()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    import pickle

    with (tmp_path / "infos.pkl").open("wb") as f:
        pickle.dump({"opt": model.cfg.to_opt(), "vocab": VOCAB}, f, protocol=2)
    image = np.full((60, 80, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    np.savez_compressed(tmp_path / "feat.npz", feat=inputs()[1][0])
    boxes = np.array([[0, 0, 20, 20], [20, 0, 40, 30], [40, 10, 79, 59], [0, 30, 30, 59], [10, 10, 50, 50],
                      [60, 0, 79, 20]], np.float32)
    np.save(tmp_path / "boxes.npy", boxes)
    opts = figures.CaptionVisOptions(output=tmp_path / "out", att_feats=tmp_path / "feat.npz", boxes=tmp_path / "boxes.npy",
                               save_raw=True)
    report = figures.visualize_caption(tmp_path / "img.png", tmp_path / "model.pth", tmp_path / "infos.pkl", opts)
    names = {p.name for p in report.files}
    words = report.sentence.split()
    assert words and {f"word_{t}_{w}.png" for t, w in enumerate(words)} <= names
    assert {"caption_strip.png", "attn_raw_layer_5.npy", "decoder_attention.npy"} <= names
    assert {f"attn_map_layer_{i}_refiner_layers_{i}_self_attn.png" for i in range(6)} <= names
    assert all(p.is_file() for p in report.files)
    strip = cv2.imread(str(tmp_path / "out" / "caption_strip.png"))
    assert strip.shape[1] >= len(words) * 100
    overlay = cv2.imread(str(tmp_path / "out" / f"word_0_{words[0]}.png"))
    assert overlay.shape == (60, 80, 3) and not np.all(overlay == 90)


def test_visualize_cli_entry_point(tmp_path, capsys):
    import argparse
    import pickle

    import cv2

    model = make_model()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    with (tmp_path / "infos.pkl").open("wb") as f:
        pickle.dump({"opt": model.cfg.to_opt(), "vocab": VOCAB}, f, protocol=2)
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((30, 30, 3), np.uint8))
    np.savez(tmp_path / "feat.npz", feat=inputs()[1][0])
    np.save(tmp_path / "boxes.npy", np.tile(np.array([[0, 0, 10, 10]], np.float32), (6, 1)))
    args = argparse.Namespace(image=tmp_path / "img.png", model=tmp_path / "model.pth", infos_path=tmp_path / "infos.pkl",
                              output=tmp_path / "o", att_feats=tmp_path / "feat.npz", boxes=tmp_path / "boxes.npy",
                              backbone_weights=None, beam_size=2, head=1, layer=3, save_raw=False, colormap="jet",
                              alpha=0.4, device="auto", backend="torch", prompt=None)
    assert cli_visualize.run_caption(args) == 0
    assert "caption:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").glob("heatmap_layer_*")) == ["heatmap_layer_3_refiner_layers_3_self_attn.png"]
    args.head = 9
    with pytest.raises(InputError, match=r"head 9 out of range: this model has heads 0..3"):
        cli_visualize.run_caption(args)


def test_visualize_needs_features(tmp_path):
    opts = figures.CaptionVisOptions(output=tmp_path)
    with pytest.raises(InputError, match="cannot read image"):
        figures.visualize_caption(tmp_path / "missing.png", tmp_path / "m.pth", tmp_path / "i.pkl", opts)


def test_resnet_grid_features_have_the_reference_shapes():
    net = features.reference_resnet(None, depth=50)  # same blocks as 101, cheaper to build
    assert net.maxpool.ceil_mode and net.layer2[0].conv1.stride == (2, 2)
    fc, att = features.resnet_grid_features(net, np.zeros((64, 48, 3), np.uint8))
    assert fc.shape == (1, 2048) and att.shape == (1, 196, 2048)
    with pytest.raises(InputError, match="backbone weights not found"):
        features.reference_resnet("/nonexistent/resnet101.pth")


# ---------------------------------------------------------------- the shipped tiny captioner


def peak_in_box(attn: np.ndarray, box) -> bool:
    side = tiny.TINY_IMAGE // tiny.TINY_CELL
    cell = int(np.argmax(attn.mean(0)))
    cx, cy = (cell % side + 0.5) * tiny.TINY_CELL, (cell // side + 0.5) * tiny.TINY_CELL
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def test_tiny_captioner_names_objects_and_looks_at_them():
    scenes = [tiny.make_caption_scene(tiny.TINY_HELD_OUT_SEED + 100 + i) for i in range(100)]
    fc, att = tiny.tiny_features(tiny.load_tiny_backbone(), np.stack([s.image for s in scenes]))
    res = captioner.load_default_captioner().caption(fc, att)
    exact = np.mean([res.sentences[b] == s.caption for b, s in enumerate(scenes)])
    assert exact >= 0.8
    hits = []
    for b, scene in enumerate(scenes):
        words = res.words(b)
        for t in range(len(words)):
            obj = scene.object_of(words, t)  # a shape word, and the object its colour names
            if obj is not None:
                hits.append(peak_in_box(res.decoder_attention[b, t], scene.boxes[obj]))
    assert len(hits) >= 200 and np.mean(hits) >= 0.8


def test_demo_caption_writes_the_strip(tmp_path):
    report = figures.demo_caption(tmp_path)
    assert report.sentence
    assert (tmp_path / "caption_strip.png").is_file() and (tmp_path / "scene.png").is_file()
    assert (tmp_path / "heatmap_layer_0_refiner_layers_0_self_attn.png").is_file()
