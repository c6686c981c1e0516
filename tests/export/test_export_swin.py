"""A Hugging Face Swin end to end: ONNX with every block's window maps as outputs, then visualize.

Oracle: the weights the model's own ``SwinAttention`` modules return
(a fresh eager load; the last block of each stage is also what
``output_attentions=True`` returns), stitched by
:func:`attnvis.render.windows.stitch_windows` (checked against a plain NumPy
reference in tests/render/test_render_windows.py). The input is not square
(40×56), so stages have padded windows.
"""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnvis.errors import InputError  # noqa: E402
from attnvis.export import export_onnx  # noqa: E402
from attnvis.render.windows import stitch_windows  # noqa: E402
from attnvis.runtime import OrtSession, TorchSession, load_image, preprocess  # noqa: E402
from attnvis.sources import load_source  # noqa: E402
from attnvis.sources.windows import hf_swin_layouts  # noqa: E402
from attnvis.visualize import visualize_attention_on_image  # noqa: E402

SIZE = (40, 56)


def save_tiny_swin(directory, v2: bool = False):
    """A tiny random Swin (or Swinv2) ForImageClassification saved in ``directory/model``, with a 40×56 processor.

    3 stages of 2 blocks, heads 1, 2, 2, window 3, configured at 48×48.
    """
    torch.manual_seed(0)
    prefix = "Swinv2" if v2 else "Swin"
    config = getattr(transformers, f"{prefix}Config")(image_size=48, patch_size=4, embed_dim=8, depths=[2, 2, 2],
                                                      num_heads=[1, 2, 2], window_size=3, num_labels=3)
    getattr(transformers, f"{prefix}ForImageClassification")(config).save_pretrained(directory / "model")
    transformers.ViTImageProcessor(size={"height": SIZE[0], "width": SIZE[1]}).save_pretrained(directory / "model")
    return directory / "model"


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    """(model directory, exported ONNX path): a tiny random SwinForImageClassification, exported once."""
    directory = tmp_path_factory.mktemp("swin")
    save_tiny_swin(directory)
    report = export_onnx(load_source(str(directory / "model")), directory / "swin.onnx")
    assert report.ok, report.table()
    return directory / "model", directory / "swin.onnx"


def hf_block_weights(directory, x: torch.Tensor) -> list[np.ndarray]:
    """Every block's (B·windows, heads, w², w²), as its ``SwinAttention`` returns it (fresh eager load)."""
    model = transformers.SwinForImageClassification.from_pretrained(directory, attn_implementation="eager").eval()
    seen = []
    for stage in model.swin.encoder.layers:
        for block in stage.blocks:
            block.attention.register_forward_hook(lambda _m, _a, out: seen.append(out[1].numpy()))
    with torch.no_grad():
        last = model(pixel_values=x, output_attentions=True).attentions
    for i, attn in zip((1, 3, 5), last):  # the hooks agree with output_attentions where it reports
        np.testing.assert_array_equal(seen[i], attn.numpy())
    return seen


def test_onnx_maps_equal_hf_and_carry_layouts(swin):
    directory, onnx_path = swin
    x = torch.randn(3, 3, *SIZE)
    got = OrtSession(onnx_path, device="cpu").run(x.numpy())
    layouts = hf_swin_layouts(transformers.SwinConfig.from_pretrained(directory), SIZE)
    assert [info.window for info in got.metadata.layers] == layouts
    assert {layout.shift for layout in layouts} == {0, 1} and layouts[-1].grid == (3, 4)
    assert got.metadata.tokens.grid == (10, 14) and got.metadata.tokens.cls_index is None
    for mine, theirs, layout in zip(got.maps, hf_block_weights(directory, x), layouts):
        assert mine.shape == (3, layout.num_windows, *theirs.shape[1:])  # batch first: (B, windows, heads, w², w²)
        np.testing.assert_allclose(mine.reshape(theirs.shape), theirs, atol=1e-5, rtol=0)


def _image(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def test_visualize_stitches_every_block(swin, tmp_path):
    directory, onnx_path = swin
    image = _image(tmp_path)
    result = visualize_attention_on_image(model=str(onnx_path), image_path=image, output_dir=tmp_path / "out",
                                          save_raw=True, device="cpu")
    layouts = [info.window for info in OrtSession(onnx_path, device="cpu").metadata.layers]
    x = torch.from_numpy(preprocess([load_image(image)], OrtSession(onnx_path, device="cpu").metadata.preprocess))
    theirs = hf_block_weights(directory, x)
    assert result.layers == list(range(6))
    for i, (attn, layout) in enumerate(zip(theirs, layouts)):
        assert result.maps[i].shape == layout.grid  # the stage's resolution
        np.testing.assert_allclose(result.maps[i], stitch_windows(attn, layout), atol=1e-5)
        raw = np.load(tmp_path / "out" / f"attn_raw_layer_{i}.npy")
        assert raw.shape == attn.shape  # as captured: (B·windows, heads, w², w²) with B = 1
        np.testing.assert_allclose(raw, attn, atol=1e-5)
    names = {p.name for p in result.files}
    assert len(names) == 18 and any(n.startswith("heatmap_layer_1_") and n.endswith("layers.0.blocks.1.attention.png")
                                    for n in names)

    one = visualize_attention_on_image(model=str(onnx_path), image_path=image, output_dir=tmp_path / "head",
                                       layer=3, head=1, device="cpu")
    np.testing.assert_allclose(one.maps[3], stitch_windows(theirs[3], layouts[3], head=1), atol=1e-5)
    with pytest.raises(InputError, match="--rollout is not available for windowed attention"):
        visualize_attention_on_image(model=str(onnx_path), image_path=image, output_dir=tmp_path / "r", rollout=True,
                                     device="cpu")


@pytest.mark.parametrize("reduce", ["mean-heads", "cls"])
def test_reductions_stitch_as_the_renderer(swin, reduce):
    """The in-graph reductions (eager wrapper, as exported) against the full maps stitched in NumPy."""
    directory, _ = swin
    source = load_source(str(directory))
    x = torch.randn(2, 3, *SIZE).numpy()
    full = TorchSession(source, device="cpu").run(x)
    reduced = TorchSession(source, device="cpu", reduce=reduce).run(x)
    for f, r, info in zip(full.maps, reduced.maps, full.metadata.layers):
        for b in range(2):
            want = stitch_windows(f[b], info.window)
            if reduce == "cls":
                assert r[b].shape == (want.size,)
                np.testing.assert_allclose(r[b].reshape(want.shape), want, atol=1e-6)
            else:
                np.testing.assert_allclose(r[b], f[b].mean(axis=1), atol=1e-6)
                np.testing.assert_allclose(stitch_windows(r[b], info.window), want, atol=1e-6)
