"""AoANet model: checkpoint layout, strict reloads, option matrix, bad checkpoints."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

from attnvis.errors import InputError, ModelError
from attnvis.captioning import captioner, checkpoint, model as aoa, tiny

VOCAB = {str(i): w for i, w in enumerate("a the red circle blue square and on dog cat UNK".split(), 1)}


def config(**overrides) -> aoa.AoAConfig:
    base = dict(vocab_size=len(VOCAB), input_encoding_size=16, rnn_size=16, att_hid_size=12, fc_feat_size=10,
                att_feat_size=10, drop_prob_lm=0.5, num_heads=4, multi_head_scale=1, use_multi_head=2, refine=1,
                refine_aoa=1, use_ff=1, max_length=8)
    base.update(overrides)
    return aoa.AoAConfig(**base)


def write_pair(tmp_path, model: aoa.AoAModel, opt: argparse.Namespace | None = None):
    """A model.pth / infos.pkl pair as the original training code writes them."""
    torch.save(model.state_dict(), tmp_path / "model.pth")
    with (tmp_path / "infos.pkl").open("wb") as f:
        pickle.dump({"opt": opt or model.cfg.to_opt(), "vocab": VOCAB, "iter": 0}, f, protocol=2)
    return tmp_path / "infos.pkl", tmp_path / "model.pth"


def test_layernorm_divides_by_unbiased_std_plus_eps():
    norm = aoa.LayerNorm(5)
    x = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])
    expected = (x.numpy() - x.numpy().mean()) / (x.numpy().std(ddof=1) + 1e-6)
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-6)


def test_default_layout_has_the_reference_names_and_shapes():
    state = aoa.AoAModel(config(), VOCAB).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["embed.0.weight"] == (len(VOCAB) + 1, 16)
    assert shapes["ctx2att.weight"] == (2 * 16, 16)  # use_multi_head=2: keys and values for the decoder
    assert shapes["core.att_lstm.weight_ih"] == (64, 32)
    assert shapes["core.att2ctx.0.weight"] == (32, 32)
    assert shapes["core.attention.norm.a_2"] == (16,)
    assert shapes["core.attention.linears.0.weight"] == (16, 16)
    assert "core.attention.linears.1.weight" not in shapes  # keys/values are not projected in the decoder
    assert shapes["refiner.layers.5.self_attn.aoa_layer.0.weight"] == (32, 32)
    assert shapes["refiner.layers.5.feed_forward.w_1.weight"] == (2048, 16)
    assert shapes["refiner.layers.5.sublayer.1.norm.b_2"] == (16,)
    assert shapes["refiner.norm.a_2"] == (16,)
    assert not any(k.startswith("fc_embed") or "output_layer" in k for k in shapes)
    assert shapes["logit.weight"] == (len(VOCAB) + 1, 16)


@pytest.mark.parametrize(
    ("overrides", "present", "absent"),
    [
        (dict(refine=0), [], ["refiner.norm.a_2"]),
        (dict(refine_aoa=0), ["refiner.layers.0.self_attn.output_layer.weight"], ["refiner.layers.0.self_attn.aoa_layer.0.weight"]),
        (dict(use_ff=0), [], ["refiner.layers.0.feed_forward.w_1.weight", "refiner.layers.0.sublayer.1.norm.a_2"]),
        (dict(decoder_type="LSTM"), ["core.att2ctx.weight_ih", "core.att2ctx.bias_hh"], ["core.att2ctx.0.weight"]),
        (dict(decoder_type="base"), ["core.att2ctx.0.weight"], ["core.att2ctx.weight_ih"]),
        (dict(use_multi_head=1), ["core.attention.h2att.weight", "core.attention.alpha_net.bias"], ["core.attention.norm.a_2"]),
        (dict(mean_feats=0), ["fc_embed.0.weight"], []),
        (dict(use_bn=2), ["att_embed.0.running_mean", "att_embed.1.weight", "att_embed.4.running_var"], []),
    ],
)
def test_options_change_the_layout_as_the_reference(overrides, present, absent):
    keys = set(aoa.AoAModel(config(**overrides), VOCAB).state_dict())
    assert set(present) <= keys
    assert not set(absent) & keys


def test_ctx2att_and_att2ctx_follow_multi_head_scale():
    state = aoa.AoAModel(config(multi_head_scale=2), VOCAB).state_dict()
    assert tuple(state["ctx2att.weight"].shape) == (2 * 2 * 16, 16)
    assert tuple(state["core.att2ctx.0.weight"].shape) == (32, 2 * 16 + 16)
    assert tuple(state["refiner.layers.0.self_attn.linears.0.weight"].shape) == (32, 16)


def test_checkpoint_reloads_strictly_and_decodes_the_same(tmp_path):
    torch.manual_seed(0)
    model = aoa.AoAModel(config(), VOCAB).eval()
    infos, pth = write_pair(tmp_path, model)
    loaded = checkpoint.build_model(infos, pth)
    fc, att = torch.randn(2, 10), torch.randn(2, 5, 10)
    seq = torch.tensor([[0, 3, 4, 0], [0, 1, 2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(fc, att, seq), model(fc, att, seq), rtol=0, atol=0)
    assert captioner.load_aoanet(infos, pth).caption(fc, att).seq.shape == (2, 8)


# (refine, refine_aoa, use_ff) x decoder_type x (use_multi_head, multi_head_scale) x mean_feats x ctx_drop:
# every value of every option, most pairs of values (the full product is 180 models)
MATRIX = [
    ((0, 1, 1), "AoA", (2, 1), 1, 0), ((1, 1, 1), "LSTM", (2, 2), 0, 1), ((1, 0, 1), "base", (0, 1), 1, 1),
    ((1, 1, 0), "AoA", (2, 2), 0, 0), ((1, 0, 0), "LSTM", (0, 1), 1, 0), ((0, 1, 1), "base", (2, 2), 1, 1),
    ((1, 1, 1), "AoA", (0, 1), 0, 0), ((1, 0, 1), "LSTM", (2, 1), 0, 0), ((1, 1, 0), "base", (2, 1), 1, 1),
    ((1, 0, 0), "AoA", (2, 2), 0, 1),
]


@pytest.mark.parametrize(("refiner", "decoder", "attention", "mean_feats", "ctx_drop"), MATRIX)
def test_option_matrix_builds_reloads_and_decodes(refiner, decoder, attention, mean_feats, ctx_drop):
    refine, refine_aoa, use_ff = refiner
    use_multi_head, scale = attention
    cfg = config(refine=refine, refine_aoa=refine_aoa, use_ff=use_ff, decoder_type=decoder, use_multi_head=use_multi_head,
                 multi_head_scale=scale, mean_feats=mean_feats, ctx_drop=ctx_drop)
    torch.manual_seed(1)
    model = aoa.AoAModel(cfg, VOCAB).eval()
    fresh = aoa.AoAModel(cfg, VOCAB)
    fresh.load_state_dict(model.state_dict(), strict=True)
    from attnvis.captioning.captioner import Captioner

    masks = torch.ones(2, 6)
    masks[1, 4:] = 0
    for beam in (1, 2):
        res = Captioner.from_torch(fresh).caption(torch.randn(2, 10), torch.randn(2, 6, 10), masks, beam_size=beam)
        heads = 4 if use_multi_head == 2 else 1
        assert res.decoder_attention.shape == (2, 8, heads, 6)
        assert len(res.refiner_attention) == (6 if refine else 0)
        steps = (np.cumsum(res.seq == 0, 1) == 0) | (np.cumsum(res.seq == 0, 1) == 1) & (res.seq == 0)
        np.testing.assert_allclose(res.decoder_attention.sum(-1)[steps], 1.0, atol=1e-5)
        assert np.all(res.decoder_attention[1, :, :, 4:] == 0)  # padded regions get no attention


def test_mismatched_infos_names_the_shape(tmp_path):
    model = aoa.AoAModel(config(), VOCAB)
    infos, pth = write_pair(tmp_path, model, opt=config(rnn_size=24, input_encoding_size=24).to_opt())
    with pytest.raises(ModelError, match=r"'embed.0.weight' has shape \(12, 16\), the options give \(12, 24\)"):
        captioner.load_aoanet(infos, pth)


def test_mismatched_infos_names_the_key(tmp_path):
    model = aoa.AoAModel(config(), VOCAB)
    infos, pth = write_pair(tmp_path, model, opt=config(decoder_type="LSTM").to_opt())
    with pytest.raises(ModelError, match=r"missing 'core.att2ctx.weight_ih'.*unexpected 'core.att2ctx.0.weight'"):
        captioner.load_aoanet(infos, pth)


def test_bad_files_raise_one_line_errors(tmp_path):
    model = aoa.AoAModel(config(), VOCAB)
    infos, pth = write_pair(tmp_path, model)
    with pytest.raises(InputError, match="infos file not found"):
        captioner.load_aoanet(tmp_path / "nope.pkl", pth)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        captioner.load_aoanet(infos, tmp_path / "junk.pth")
    with (tmp_path / "noopt.pkl").open("wb") as f:
        pickle.dump({"vocab": VOCAB}, f)
    with pytest.raises(ModelError, match="needs 'opt' and 'vocab'"):
        captioner.load_aoanet(tmp_path / "noopt.pkl", pth)
    opt = model.cfg.to_opt()
    del opt.rnn_size
    with (tmp_path / "short.pkl").open("wb") as f:
        pickle.dump({"opt": opt, "vocab": VOCAB}, f)
    with pytest.raises(ModelError, match="no 'rnn_size'"):
        captioner.load_aoanet(tmp_path / "short.pkl", pth)
    with pytest.raises(InputError, match="backend must be"):
        captioner.load_aoanet(infos, pth, backend="tf")


def test_max_length_falls_back_to_seq_length_as_the_reference():
    assert config(max_length=None, seq_length=16).decode_length == 16
    assert config(max_length=5, seq_length=16).decode_length == 5


def test_tiny_scenes_are_reproducible_and_named_in_colour_order():
    a, b = tiny.make_caption_scene(123), tiny.make_caption_scene(123)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    assert a.colours == sorted(a.colours, key=list(tiny.TINY_COLOURS).index)
    assert len(a.colours) == len(set(a.colours)) >= 2
    words = a.caption.split()
    assert [a.object_of(words, t) for t in range(len(words))].count(None) == len(words) - len(a.shapes)
    for box in a.boxes:  # each object is drawn inside its box
        x1, y1, x2, y2 = box
        assert a.image[y1:y2 + 1, x1:x2 + 1].max() > 150
