"""Hugging Face vision models from a local directory: maps equal ``output_attentions=True`` (eager).

Each test saves a small random model (and its image processor) to
``tmp_path`` with ``save_pretrained`` and loads it back the way a user's
downloaded snapshot is loaded; nothing is downloaded.
"""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnvis.capture.adapters.hf  # noqa: E402,F401  (registers the HF adapter)
from attnvis.errors import InputError, ModelError  # noqa: E402
from attnvis.capture import capture_attention  # noqa: E402
from attnvis.export import export_onnx  # noqa: E402
from attnvis.sources import hf as zoo  # noqa: E402
from attnvis.sources import load_source  # noqa: E402
from attnvis.runtime import OrtSession  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)


def _families():
    t = transformers
    dinov2 = {k: v for k, v in SMALL.items() if k != "intermediate_size"}
    return {
        # family: (class saved, config, image processor or None, prefix names, cls used to reload as oracle)
        "vit": (t.ViTForImageClassification, t.ViTConfig(**SMALL, num_labels=3),
                t.ViTImageProcessor(size={"height": 32, "width": 32}), ("cls",), t.ViTForImageClassification),
        "deit": (t.DeiTForImageClassificationWithTeacher, t.DeiTConfig(**SMALL),
                 t.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}),
                 ("cls", "dist"), t.DeiTForImageClassificationWithTeacher),
        "beit": (t.BeitModel, t.BeitConfig(**SMALL, use_relative_position_bias=True),
                 t.BeitImageProcessor(size={"height": 32, "width": 32}), ("cls",), t.BeitModel),
        "dinov2_with_registers": (t.Dinov2WithRegistersModel,
                                  t.Dinov2WithRegistersConfig(**dinov2, mlp_ratio=2, num_register_tokens=4),
                                  t.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}),
                                  ("cls", "reg0", "reg1", "reg2", "reg3"), t.Dinov2WithRegistersModel),
        "clip": (t.CLIPModel, t.CLIPConfig(vision_config=SMALL, text_config=TEXT),
                 t.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 ("cls",), t.CLIPVisionModel),
    }


def save_model(family: str, directory) -> None:
    cls, config, processor, _, _ = _families()[family]
    torch.manual_seed(0)
    cls(config).save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)


def hf_oracle(cls, directory, x: torch.Tensor, **kwargs) -> list[np.ndarray]:
    """The library's own maps: a fresh eager load, ``output_attentions=True``."""
    model = cls.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        return [a.numpy() for a in model(pixel_values=x, output_attentions=True, **kwargs).attentions]


@pytest.mark.parametrize("family", list(_families()))
def test_maps_equal_output_attentions(family, tmp_path):
    save_model(family, tmp_path / "model")
    source = load_source(str(tmp_path / "model"))  # a directory is a Hugging Face model
    prefix, oracle_cls = _families()[family][3], _families()[family][4]
    report = export_onnx(source, tmp_path / "m.onnx")
    assert report.ok, report.table()

    x = torch.randn(3, 3, 32, 32)
    got = OrtSession(tmp_path / "m.onnx", device="cpu").run(x.numpy())
    tokens = got.metadata.tokens
    assert (tokens.prefix_names, tokens.prefix_tokens, tokens.grid, tokens.cls_index) == (prefix, len(prefix), (4, 4), 0)
    oracle = hf_oracle(oracle_cls, tmp_path / "model", x)
    assert len(got.maps) == len(oracle) == 2
    for mine, theirs in zip(got.maps, oracle):
        assert mine.shape == (3, 4, len(prefix) + 16, len(prefix) + 16)
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,want", [
    ("vit", dict(size=(32, 32), resize_short=False, crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5))),
    ("deit", dict(size=(32, 32), resize_short=True, crop_pct=0.8, interpolation="bicubic")),
    ("dinov2_with_registers", dict(size=(32, 32), resize_short=True, crop_pct=0.8, interpolation="bicubic")),
    ("clip", dict(size=(32, 32), resize_short=True, crop_pct=1.0, mean=(0.48145466, 0.4578275, 0.40821073))),
])
def test_preprocessing_comes_from_the_image_processor_config(family, want, tmp_path):
    save_model(family, tmp_path)
    pre = zoo.load_hf(tmp_path).preprocess
    assert {k: getattr(pre, k) for k in want} == want
    assert pre.scale == pytest.approx(1 / 255)


def test_no_processor_config_warns_and_uses_the_model_size(tmp_path):
    cls, config = transformers.ViTModel, transformers.ViTConfig(**SMALL)
    cls(config).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no preprocessor_config.json"):
        source = zoo.load_hf(tmp_path)
    assert source.preprocess.size == (32, 32)


def test_non_square_input_interpolates_position_embeddings(tmp_path):
    save_model("vit", tmp_path / "model")
    source = zoo.load_hf(tmp_path / "model", image_size=(32, 48))
    assert source.tokens.grid == (4, 6) and source.preprocess.size == (32, 48)
    export_onnx(source, tmp_path / "m.onnx")
    x = torch.randn(2, 3, 32, 48)
    got = OrtSession(tmp_path / "m.onnx", device="cpu").run(x.numpy())
    oracle = hf_oracle(transformers.ViTForImageClassification, tmp_path / "model", x, interpolate_pos_encoding=True)
    for mine, theirs in zip(got.maps, oracle):
        assert mine.shape == (2, 4, 25, 25)
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)


def test_adapter_switches_sdpa_to_eager_and_back():
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**SMALL)).eval()
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(2, 3, 32, 32)
    with capture_attention(model) as recorder, torch.no_grad():
        model(x)
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    assert [layer.module_type for layer in recorder.layers] == ["ViTAttention"] * 2
    model.set_attn_implementation("eager")
    with torch.no_grad():
        want = model(x, output_attentions=True).attentions
    for mine, theirs in zip(recorder.weights, want):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_unsupported_windowed_type_is_rejected_naming_windowed_attention(tmp_path):
    # Swin and Swinv2 are stitched (tests/export/test_export_swin.py); other windowed types are refused.
    config = transformers.DonutSwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                          window_size=4)
    transformers.DonutSwinModel(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="model_type 'donut-swin' \\(DonutSwinModel\\) uses windowed attention.*"
                                         "supported: swin, swinv2"):
        zoo.load_hf(tmp_path)


def test_unsupported_model_type_names_what_was_found(tmp_path):
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    transformers.ResNetModel(config).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="model_type 'resnet' \\(ResNetModel\\) is not a supported vision transformer"):
        zoo.load_hf(tmp_path)


def test_a_directory_without_config_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a Hugging Face model directory \\(no config.json\\)"):
        zoo.load_hf(tmp_path)


@pytest.mark.parametrize("size, needle", [((4, 4), "the smallest size is 8x8"),
                                          ((32, 100_000), "4096 pixels a side")])
def test_image_size_below_a_patch_or_past_the_bound_is_one_line(tmp_path, size, needle):
    save_model("vit", tmp_path / "model")
    with pytest.raises(InputError, match=needle) as err:
        zoo.load_hf(tmp_path / "model", image_size=size)
    assert "\n" not in str(err.value)


def test_image_size_on_a_model_that_cannot_interpolate_is_refused(tmp_path, monkeypatch):
    save_model("vit", tmp_path / "model")
    monkeypatch.setattr(zoo, "_takes_interpolate", lambda model: False)
    with pytest.raises(InputError, match="takes only 32x32 inputs"):
        zoo.load_hf(tmp_path / "model", image_size=(32, 48))
