"""A torchvision Swin to ONNX: every block's window maps as outputs, equal to the PyTorch capture.

The PyTorch capture is checked against torchvision's own softmax, and its
stitching against a plain NumPy reference, in tests/capture/test_torchvision_swin.py.
The input (28×44) is not square: the stages pad their windows and the last
block shifts along the columns only.
"""

import numpy as np
import pytest
import torch

swin_tv = pytest.importorskip("torchvision.models.swin_transformer")

from attnvis.capture import capture_attention  # noqa: E402
from attnvis.export import export_onnx  # noqa: E402
from attnvis.metadata import TokenLayout  # noqa: E402
from attnvis.render.windows import stitch_windows  # noqa: E402
from attnvis.runtime import OrtSession  # noqa: E402
from attnvis.sources import ModelSource  # noqa: E402

SIZE = (28, 44)  # 4-pixel patches: grids 7x11 and 4x6


def _source() -> ModelSource:
    torch.manual_seed(0)
    model = swin_tv.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2],
                                    window_size=[4, 4], num_classes=10).eval()
    return ModelSource(model, (torch.randn(2, 3, *SIZE),), TokenLayout(grid=(7, 11), kind="grid"), None, "tv-swin")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{reduction: (source, ONNX path)}, each exported (and self-validated) once."""
    directory = tmp_path_factory.mktemp("tvswin")
    paths = {}
    for reduce in ("none", "cls"):
        source = _source()
        report = export_onnx(source, directory / f"{reduce}.onnx", reduce=reduce)
        assert report.ok, report.table()
        paths[reduce] = (source, directory / f"{reduce}.onnx")
    return paths


def test_onnx_maps_equal_pytorch_capture(exported):
    source, path = exported["none"]
    x = torch.randn(3, 3, *SIZE)  # another batch size: batch is dynamic
    got = OrtSession(path, device="cpu").run(x.numpy())
    with capture_attention(source.model) as recorder, torch.no_grad():
        source.model(x)
    assert [info.window for info in got.metadata.layers] == [info.window for info in recorder.layers]
    assert [info.window.shift for info in got.metadata.layers] == [0, 2, 0, (0, 2)]
    assert len(got.maps) == 4
    for mine, theirs in zip(got.maps, recorder.weights):
        assert mine.shape == tuple(theirs.shape)  # (B, windows, heads, w², w²)
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-5, rtol=0)


def test_cls_reduction_is_the_stitched_map(exported):
    """``--reduce cls`` on a windowed model gives, in-graph, what the renderer stitches from the full maps."""
    x = torch.randn(2, 3, *SIZE).numpy()
    full = OrtSession(exported["none"][1], device="cpu").run(x)
    reduced = OrtSession(exported["cls"][1], device="cpu").run(x)
    for f, r, info in zip(full.maps, reduced.maps, full.metadata.layers):
        for b in range(2):
            want = stitch_windows(f[b], info.window)
            assert r[b].shape == (want.size,)
            np.testing.assert_allclose(r[b].reshape(want.shape), want, atol=1e-6)
