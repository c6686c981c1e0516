"""A Hugging Face Swinv2 end to end: ONNX with every block's window maps as outputs, then ``attnvis visualize``.

Oracle: the weights the model's own ``Swinv2Attention`` modules return with
``output_attentions=True`` (a fresh eager load; ``outputs.attentions`` is each
stage's last block and is checked against them). The input is not square
(40×56), so stages have padded windows. Swinv2 fixes each block's window and
shift from the *configured* resolution (not the one it is called with), so the
layouts are checked against the blocks' own ``window_size``/``shift_size``.
"""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnvis.cli import main  # noqa: E402
from attnvis.export import export_onnx  # noqa: E402
from attnvis.render.windows import stitch_windows  # noqa: E402
from attnvis.runtime import OrtSession, TorchSession, load_image, preprocess  # noqa: E402
from attnvis.sources import load_source  # noqa: E402
from attnvis.sources.windows import hf_swin_layouts  # noqa: E402
from attnvis.visualize import visualize_attention_on_image  # noqa: E402
from tests.export.test_export_swin import _image, save_tiny_swin  # noqa: E402

SIZE = (40, 56)


@pytest.fixture(scope="module")
def swinv2(tmp_path_factory):
    """(model directory, exported ONNX path): a tiny random Swinv2ForImageClassification, exported once."""
    directory = tmp_path_factory.mktemp("swinv2")
    save_tiny_swin(directory, v2=True)
    report = export_onnx(load_source(str(directory / "model")), directory / "swinv2.onnx")
    assert report.ok, report.table()
    return directory / "model", directory / "swinv2.onnx"


def hf_blocks(directory):
    model = transformers.Swinv2ForImageClassification.from_pretrained(directory, attn_implementation="eager").eval()
    return model, [block for stage in model.swinv2.encoder.layers for block in stage.blocks]


def hf_block_weights(directory, x: torch.Tensor) -> list[np.ndarray]:
    """Every block's (B·windows, heads, w², w²), as its ``Swinv2Attention`` returns it (fresh eager load)."""
    model, blocks = hf_blocks(directory)
    seen = []
    for block in blocks:
        block.attention.register_forward_hook(lambda _m, _a, out: seen.append(out[1].numpy()))
    with torch.no_grad():  # off the configured 48×48: HF interpolates, as attnvis calls it
        last = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True).attentions
    for i, attn in zip((1, 3, 5), last):  # the hooks agree with output_attentions where it reports
        np.testing.assert_array_equal(seen[i], attn.numpy())
    return seen


def test_onnx_maps_equal_hf_and_carry_the_blocks_layouts(swinv2):
    directory, onnx_path = swinv2
    x = torch.randn(3, 3, *SIZE)
    got = OrtSession(onnx_path, device="cpu").run(x.numpy())
    layouts = [info.window for info in got.metadata.layers]
    blocks = hf_blocks(directory)[1]
    assert [(lay.window, lay.shift) for lay in layouts] == [(b.window_size, b.shift_size) for b in blocks]
    assert [lay.grid for lay in layouts] == [(10, 14)] * 2 + [(5, 7)] * 2 + [(3, 4)] * 2
    assert [lay.stage for lay in layouts] == [0, 0, 1, 1, 2, 2] and not any(lay.roll_before_pad for lay in layouts)
    assert {lay.shift for lay in layouts} == {0, 1} and got.metadata.tokens.grid == (10, 14)
    assert got.metadata.tokens.cls_index is None
    for mine, theirs, layout in zip(got.maps, hf_block_weights(directory, x), layouts):
        assert mine.shape == (3, layout.num_windows, *theirs.shape[1:])  # batch first: (B, windows, heads, w², w²)
        np.testing.assert_allclose(mine.reshape(theirs.shape), theirs, atol=1e-5, rtol=0)


def test_layouts_follow_the_blocks_not_the_swin_rule(swinv2):
    """At 96×96 the last stage's grid (6×6) outgrows its window, yet Swinv2 keeps shift 0 (set from 48×48)."""
    directory, _ = swinv2
    size = (96, 96)
    source = load_source(str(directory), image_size=size)
    x = torch.randn(1, 3, *size)
    got = TorchSession(source, device="cpu").run(x.numpy())
    layouts = [info.window for info in got.metadata.layers]
    assert layouts[5].grid == (6, 6) and layouts[5].shift == 0
    assert hf_swin_layouts(transformers.Swinv2Config.from_pretrained(directory), size)[5].shift == 1  # Swin's rule
    for mine, theirs, layout in zip(got.maps, hf_block_weights(directory, x), layouts):
        np.testing.assert_allclose(stitch_windows(mine[0], layout), stitch_windows(theirs, layout), atol=1e-5)


def test_visualize_command_on_the_hf_directory(swinv2, tmp_path):
    directory, onnx_path = swinv2
    image = _image(tmp_path)
    out = tmp_path / "out"
    assert main(["visualize", "--image", str(image), "--model", str(directory), "--output", str(out), "--save-raw",
                 "--device", "cpu"]) == 0
    meta = OrtSession(onnx_path, device="cpu").metadata
    x = torch.from_numpy(preprocess([load_image(image)], meta.preprocess))
    theirs = hf_block_weights(directory, x)
    for i, (attn, info) in enumerate(zip(theirs, meta.layers)):
        assert (out / f"attn_map_layer_{i}_{info.name}.png").is_file()
        assert (out / f"heatmap_layer_{i}_{info.name}.png").is_file()
        raw = np.load(out / f"attn_raw_layer_{i}.npy")
        assert raw.shape == attn.shape  # as captured: (B·windows, heads, w², w²) with B = 1
        np.testing.assert_allclose(raw, attn, atol=1e-5)
    assert len(list(out.glob("*.png"))) == 12 and meta.layers[1].name.endswith("layers.0.blocks.1.attention.self")
    result = visualize_attention_on_image(model=str(directory), image_path=image, output_dir=tmp_path / "api",
                                          layer=3, head=1, device="cpu")
    assert result.maps[3].shape == (5, 7)  # the stage's resolution
    np.testing.assert_allclose(result.maps[3], stitch_windows(theirs[3], meta.layers[3].window, head=1), atol=1e-5)
