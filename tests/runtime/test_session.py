"""ORT session: metadata, dynamic batch, devices, preprocessing."""

import math

import numpy as np
import onnx
import pytest
import torch

from attnvis.errors import DeviceError, InputError, ModelError
from attnvis.export import export_onnx
from attnvis.metadata import ModelMetadata, Preprocess, TokenLayout
from attnvis.capture.registry import get_adapter
from attnvis.sources import ModelSource
from attnvis.runtime import OrtSession, preprocess


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, inputs = get_adapter("torch.nn.MultiheadAttention").example()
    tokens = TokenLayout(prefix_tokens=1, grid=(2, 2), cls_index=0, prefix_names=("cls",))
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    export_onnx(ModelSource(model, inputs, tokens, None, "mha", "input"), path)
    return path


def test_metadata_round_trips(exported):
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    meta = ModelMetadata.from_props(props)
    assert meta.tokens == TokenLayout(prefix_tokens=1, grid=(2, 2), cls_index=0, prefix_names=("cls",))
    assert [layer.name for layer in meta.layers] == ["layers.0.self_attn", "layers.1.self_attn"]
    assert all(layer.heads == 4 and layer.q_len == layer.k_len == 5 and layer.kind == "self" for layer in meta.layers)
    graph = onnx.load(str(exported)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in graph.output] == ["output", "attn_0", "attn_1"]


def test_cpu_provider_is_reported(exported):
    session = OrtSession(exported, device="cpu")
    assert session.provider == "CPUExecutionProvider" == session.session.get_providers()[0]
    auto = OrtSession(exported, device="auto")
    assert auto.provider == auto.session.get_providers()[0]


def test_cuda_is_never_a_silent_cpu_run(exported):
    auto = OrtSession(exported, device="auto")
    if auto.provider == "CUDAExecutionProvider":
        pytest.skip("CUDA is usable here")
    with pytest.raises(DeviceError, match="--device cuda"):
        OrtSession(exported, device="cuda")


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        OrtSession(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.onnx"):
        OrtSession(tmp_path / "junk.onnx")


def test_preprocess_matches_manual_normalization():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pre = Preprocess(size=(8, 12), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    out = preprocess([image], pre)
    want = (image.astype(np.float32) / 255 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    np.testing.assert_allclose(out[0], want.transpose(2, 0, 1), atol=1e-6)
    bgr = preprocess([image], Preprocess(size=(8, 12), mean=(0, 0, 0), std=(1, 1, 1), channel_order="BGR"))
    np.testing.assert_allclose(bgr[0, 0], image[..., 2] / 255, atol=1e-6)


def test_resize_short_then_center_crop_matches_torchvision():
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    pre = Preprocess(size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), resize_short=True, crop_pct=0.875)
    ours = preprocess([image], pre)[0]
    tv = transforms.Compose([transforms.Resize(math.floor(32 / 0.875)), transforms.CenterCrop(32), transforms.ToTensor()])
    np.testing.assert_allclose(ours, tv(Image.fromarray(image)).numpy(), atol=1e-6)


@pytest.mark.parametrize("box", [(3, 5, 20, 17), (0, 0, 30, 25), (-4, -2, 26, 23), (10, 12, 40, 40), (-5, 3, 5, 9)])
def test_crop_equals_pils_crop_also_past_the_edges(box):
    from PIL import Image

    from attnvis.runtime.images import _crop

    image = np.random.default_rng(3).integers(0, 256, (25, 30, 3), dtype=np.uint8)
    left, top, right, bottom = box
    want = np.asarray(Image.fromarray(image).crop(box))
    np.testing.assert_array_equal(_crop(image, left, top, right - left, bottom - top), want)


def test_inputs_are_left_unmodified(exported):
    x = torch.randn(3, 5, 16).numpy()
    copy = x.copy()
    OrtSession(exported, device="cpu").run(x)
    np.testing.assert_array_equal(x, copy)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "nearest"])
@pytest.mark.parametrize("size, resize_short, crop_pct", [
    ((96, 96), False, 1.0), ((40, 56), False, 1.0), ((32, 32), True, 0.875), ((24, 40), True, 0.9), ((32, 32), True, 1.25),
])
def test_preprocess_equals_pils_resize_and_crop(monkeypatch, interpolation, size, resize_short, crop_pct):
    from attnvis.runtime import images

    rng = np.random.default_rng(2)
    pre = Preprocess(size=size, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), interpolation=interpolation,
                     resize_short=resize_short, crop_pct=crop_pct)
    batch = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((480, 640, 3), (61, 45, 3), (100, 100, 3))]
    ours = preprocess(batch, pre)
    monkeypatch.setattr(images, "_PILLOW_MAJOR", -1)  # an unverified Pillow: every resize goes through PIL
    np.testing.assert_array_equal(ours, preprocess(batch, pre))
