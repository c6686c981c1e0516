"""IO binding (the CUDA path of OrtSession), checked on the CPU provider: same maps as ``session.run``."""

import numpy as np
import pytest

from attnvis.errors import InputError
from attnvis.runtime import OrtSession
from attnvis.runtime._iobind import Binder, pinned_empty, static_shape


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
    import torch

    from attnvis.export.onnx import export_onnx
    from attnvis.metadata import Preprocess, TokenLayout
    from attnvis.models.tiny import TinyViT, TinyViTConfig
    from attnvis.sources import ModelSource

    torch.manual_seed(0)
    net = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=16, depth=2, heads=2, num_classes=3)).eval()
    tokens = TokenLayout(prefix_tokens=1, grid=(4, 4), cls_index=0, prefix_names=("cls",))
    source = ModelSource(net, (torch.zeros(2, 3, 32, 32),), tokens, Preprocess(size=(32, 32)), "tiny-cls")
    path = tmp_path_factory.mktemp("model") / "tiny-cls.onnx"
    export_onnx(source, path, reduce="cls", validate=False)
    return str(path)


@pytest.mark.parametrize("model", ["tiny_batch_model", "cls_model"])
def test_bound_run_equals_plain_run(model, request):
    path = request.getfixturevalue(model)
    plain, bound = OrtSession(path, device="cpu"), OrtSession(path, device="cpu", io_binding=True)
    assert plain.binder is None and bound.binder is not None
    for batch in (3, 1, 3):  # a batch size seen before reuses its buffers
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        want, got = plain.run(x), bound.run(x)
        assert len(got.maps) == len(want.maps)
        for g, w in zip(got.maps, want.maps):
            assert isinstance(g, np.ndarray) and g.shape == w.shape and g.shape[0] == batch
            np.testing.assert_array_equal(g, w)
        for name, w in want.outputs.items():
            np.testing.assert_array_equal(got.outputs[name], w)


def test_bound_results_are_not_overwritten_by_the_next_call(cls_model):
    session = OrtSession(cls_model, device="cpu", io_binding=True)
    rng = np.random.default_rng(0)
    first = session.run(rng.standard_normal((2, 3, 32, 32), dtype=np.float32))
    kept = [m.copy() for m in first.maps]
    session.run(rng.standard_normal((2, 3, 32, 32), dtype=np.float32))
    for m, k in zip(first.maps, kept):
        np.testing.assert_array_equal(m, k)


def test_placement_full_maps_stay_on_the_device_unless_asked(tiny_batch_model, cls_model):
    full = OrtSession(tiny_batch_model, device="cpu").session
    reduced = OrtSession(cls_model, device="cpu").session
    on_gpu = Binder(full, "cuda", full_maps=True)
    assert on_gpu.placement("attn_0", host_maps=False) == "device"
    assert on_gpu.placement("attn_0", host_maps=True) == "host"
    assert on_gpu.placement("logits", host_maps=False) == "host"
    assert Binder(reduced, "cuda", full_maps=False).placement("attn_0", host_maps=False) == "host"
    assert Binder(full, "cpu", full_maps=True).placement("attn_0", host_maps=False) == "host"


def test_static_shape():
    assert static_shape(["batch", 2, 17, 17], 8) == (8, 2, 17, 17)
    assert static_shape([1, 16], 4) == (4, 16)
    assert static_shape(["batch", "seq"], 4) is None


def test_pinned_empty_gives_an_array_or_none():
    buf = pinned_empty((3, 5))
    if buf is None:
        pytest.skip("no CUDA runtime usable here: page-locked memory cannot be allocated (expected without a GPU)")
    assert buf.shape == (3, 5) and buf.dtype == np.float32
    buf[:] = 1.5
    assert float(buf.sum()) == 22.5


def test_cuda_graph_needs_cuda(tiny_batch_model):
    with pytest.raises(InputError, match="CUDA graphs"):
        OrtSession(tiny_batch_model, device="cpu", cuda_graph=True)
    with pytest.raises(InputError, match="CUDA graphs"):
        OrtSession(tiny_batch_model, device="auto", cuda_graph=True)


def test_small_outputs_come_back_together_in_one_buffer_per_call(cls_model):
    """Reduced maps and logits share one slab: one device → host copy per batch on a GPU."""
    session = OrtSession(cls_model, device="cpu", io_binding=True)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32), dtype=np.float32)
    got = session.run(x)
    arrays = [*got.maps, *got.outputs.values()]
    owner = arrays[0].base
    assert len(arrays) >= 3 and owner is not None and all(a.base is owner for a in arrays)
    layout = session.binder._slab_layout(3, host_maps=True)
    assert sorted(layout) == sorted(o.name for o in session.session.get_outputs())
    offsets = sorted(offset for offset, _ in layout.values())
    assert offsets[0] == 0 and len(set(offsets)) == len(offsets)  # side by side, none overlapping
    again = session.run(x)
    assert again.maps[0].base is not owner  # each call's results are its own


def test_an_integer_input_is_bound_as_it_is(tmp_path):
    """An explanation graph's int64 ``target`` goes through the binder unchanged (not cast to float32)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "tf"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B"]),
              helper.make_tensor_value_info("t", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    big = np.array([2**40 + 1, -3], np.int64)  # bound as float32, ORT would refuse it (and the value would change)
    (y,) = Binder(session, "cpu", full_maps=False).run([np.zeros(2, np.float32), big])
    np.testing.assert_array_equal(y, big.astype(np.float32))
