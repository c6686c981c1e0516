"""``attnvis export``'s size, layout and normalization flags: checked up front, applied, recorded; never ignored."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from attnvis.cli import main
from attnvis.models import sample_image_path


def metadata(path: Path):
    import onnx

    from attnvis.metadata import ModelMetadata

    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------- --image-size


@pytest.mark.parametrize("size, needles", [
    ("224x-1", ["--image-size 224x-1", "positive"]),
    ("0x0", ["--image-size 0x0", "positive"]),
    ("100000x100000", ["100000x100000", "4096 pixels a side", "MAX_IMAGE_SIDE"]),
    ("100x96", ["100x96", "multiple", "8x8 patch", "e.g. --image-size 96x96"]),
    ("4x4", ["4x4", "the smallest size is 8x8"]),
])
def test_default_model_refuses_a_bad_image_size(tmp_path, capsys, size, needles):
    code = main(["export", "--image-size", size, "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, *needles)
    assert not (tmp_path / "m.onnx").exists()


def test_default_model_is_exported_at_the_image_size_asked(tmp_path, capsys):
    from attnvis.runtime.loader import open_model

    path = tmp_path / "m.onnx"
    assert main(["export", "--image-size", "128x96", "--output", str(path)]) == 0
    meta = metadata(path)
    assert meta.tokens.grid == (16, 12) and meta.preprocess.size == (128, 96)
    session = open_model(str(path))
    maps = session.run(np.zeros((1, 3, 128, 96), np.float32))
    assert maps[0].shape[-1] == 1 + 16 * 12
    out = tmp_path / "o"
    assert main(["visualize", "--image", str(sample_image_path()), "--model", str(path), "--output", str(out)]) == 0
    assert len(list(out.glob("attn_map_layer_*.png"))) == 4


def test_default_model_positions_are_resampled_as_timm_does():
    timm_layers = pytest.importorskip("timm.layers")
    from attnvis.models import tiny

    model = tiny.load_default_model()
    expected = timm_layers.resample_abs_pos_embed(model.pos_embed.detach(), new_size=[16, 6], old_size=[12, 12],
                                                  num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    resized = tiny.resize_positions(model, (128, 48)).pos_embed.detach()
    np.testing.assert_allclose(resized.numpy(), expected.numpy(), atol=1e-6)


def test_timm_image_size_smaller_than_a_patch_names_the_smallest_size(tmp_path, capsys):
    pytest.importorskip("timm")
    code = main(["export", "--model", "timm:vit_tiny_patch16_224", "--random-weights", "--image-size", "7x7",
                 "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "7x7", "the smallest size is 16x16")


def test_torchvision_image_size_off_the_patch_is_one_line(tmp_path, capsys):
    pytest.importorskip("torchvision")
    code = main(["export", "--model", "torchvision:vit_b_16", "--random-weights", "--image-size", "100x100",
                 "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "100x100", "16x16 patch")


def test_foreign_onnx_image_size_is_bounded(tmp_path, capsys):
    import onnx

    from attnvis.models import default_onnx_path

    foreign = onnx.load(str(default_onnx_path()))
    del foreign.metadata_props[:]  # an ONNX file made elsewhere
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    code = main(["export", "--model", str(tmp_path / "foreign.onnx"), "--image-size", "100000x100000",
                 "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "4096 pixels a side")


# --------------------------------------------------------------------------- --grid / --prefix-tokens


@pytest.mark.parametrize("flags, needles", [
    (["--grid", "0x0", "--prefix-tokens", "17"], ["--grid 0x0", "positive"]),
    (["--grid=-4x-4"], ["--grid -4x-4", "positive"]),
    (["--prefix-tokens", "-3"], ["--prefix-tokens -3", "0 or more"]),
    (["--prefix-tokens", "2"], ["--prefix-tokens 2 needs --grid"]),
    (["--grid", "12x12"], ["--grid/--prefix-tokens", "--model default has its own"]),
])
def test_bad_layout_flags_are_refused_at_export(tmp_path, capsys, flags, needles):
    code = main(["export", *flags, "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, *needles)
    assert not (tmp_path / "m.onnx").exists()


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    """An importable module of model factories (``factories:NAME``), as a user's package would be."""
    (tmp_path / "factories.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        from attnvis.models.tiny import TinyViT, TinyViTConfig


        class Plain(nn.Module):  # no layout or preprocessing of its own
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.inner = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=16, depth=2, heads=2))

            def forward(self, x):
                return self.inner(x)


        def plain():
            return Plain()


        def small_timm():
            import timm

            return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                                     embed_dim=32, num_heads=2, num_classes=3)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "factories", raising=False)
    return tmp_path


def test_factory_grid_that_does_not_fit_is_refused_at_export(factories, tmp_path, capsys):
    code = main(["export", "--model", "factories:plain", "--input-shape", "1,3,32,32", "--grid", "4x4",
                 "--prefix-tokens", "17", "--no-validate", "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "17 prefix", "attends over 17 tokens")
    assert not (tmp_path / "m.onnx").exists()


def test_factory_image_size_other_than_its_input_shape_is_refused(factories, tmp_path, capsys):
    code = main(["export", "--model", "factories:plain", "--input-shape", "1,3,32,32", "--image-size", "64x64",
                 "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "--image-size 64x64", "--input-shape")


# --------------------------------------------------------------------------- --mean / --std


def test_factory_mean_std_flags_are_recorded(factories, tmp_path):
    path = tmp_path / "m.onnx"
    assert main(["export", "--model", "factories:plain", "--input-shape", "1,3,32,32", "--grid", "4x4",
                 "--prefix-tokens", "1", "--mean", "0.1,0.2,0.3", "--std", "0.4,0.5,0.6", "--no-validate",
                 "--output", str(path)]) == 0
    pre = metadata(path).preprocess
    assert pre.size == (32, 32) and pre.mean == (0.1, 0.2, 0.3) and pre.std == (0.4, 0.5, 0.6)


def test_factory_timm_model_records_its_own_preprocessing_and_the_flags_override_it(factories, tmp_path):
    pytest.importorskip("timm")
    from timm.data import resolve_data_config

    from attnvis.sources import load_source

    oracle = resolve_data_config({}, model=__import__("factories").small_timm())  # timm's own reading of the model
    pre = load_source("factories:small_timm", input_shape="1,3,32,32").preprocess
    assert pre is not None and pre.size == (32, 32)
    assert pre.mean == pytest.approx(oracle["mean"]) and pre.std == pytest.approx(oracle["std"])
    assert pre.crop_pct == pytest.approx(oracle["crop_pct"]) and pre.interpolation == oracle["interpolation"]
    path = tmp_path / "m.onnx"
    assert main(["export", "--model", "factories:small_timm", "--input-shape", "1,3,32,32", "--mean", "0.1,0.2,0.3",
                 "--no-validate", "--output", str(path)]) == 0
    recorded = metadata(path).preprocess
    assert recorded.mean == (0.1, 0.2, 0.3) and recorded.std == pytest.approx(oracle["std"])


def test_factory_hf_and_torchvision_models_record_their_own_normalization(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torchvision = pytest.importorskip("torchvision")
    from attnvis.sources import load_source

    hf_dir = tmp_path / "hf-vit"
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8)
    transformers.ViTModel(config).save_pretrained(hf_dir)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                                   image_std=[0.3, 0.2, 0.1]).save_pretrained(hf_dir)
    (tmp_path / "more_factories.py").write_text(textwrap.dedent(f'''
        def hf_vit():
            import transformers

            return transformers.ViTModel.from_pretrained({str(hf_dir)!r}, attn_implementation="eager")


        def tv_vit():
            from torchvision.models.vision_transformer import VisionTransformer

            return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)  # the library's own reading of the folder
    pre = load_source("more_factories:hf_vit", input_shape="1,3,32,32").preprocess
    assert pre.mean == pytest.approx(processor.image_mean) and pre.std == pytest.approx(processor.image_std)
    imagenet = torchvision.models.ViT_B_16_Weights.DEFAULT.transforms()
    pre = load_source("more_factories:tv_vit", input_shape="1,3,32,32").preprocess
    assert pre.mean == pytest.approx(imagenet.mean) and pre.std == pytest.approx(imagenet.std)


def test_mean_std_on_a_sequence_model_is_refused(tmp_path, capsys):
    code = main(["export", "--model", "torch.nn:Identity", "--input-shape", "1,4,8", "--mean", "0,0,0",
                 "--output", str(tmp_path / "m.onnx")])
    one_line_error(capsys, code, "--mean/--std normalize images")
