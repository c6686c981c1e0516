"""An ONNX file's metadata read without parsing its graph equals what ``onnx.load`` reads."""

from __future__ import annotations

import onnx
import pytest

from attnvis.errors import ModelError
from attnvis.models import default_onnx_path
from attnvis.runtime._props import metadata_props
from attnvis.runtime.session import OrtSession, read_metadata


@pytest.mark.parametrize("which", ["default", "tiny"])
def test_metadata_props_equal_onnx_load(which, tiny_batch_model):
    path = default_onnx_path() if which == "default" else tiny_batch_model
    want = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    assert metadata_props(path) == want and any(key.startswith("attnvis.") for key in want)
    assert read_metadata(path) == OrtSession(path, device="cpu", threads=1).metadata


def test_a_model_without_attnvis_metadata_or_cut_short_is_named(tmp_path):
    data = default_onnx_path().read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("cut.onnx", "empty.onnx"):
        with pytest.raises(ModelError, match=name):
            read_metadata(tmp_path / name)
