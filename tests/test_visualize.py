"""The seed guide's one-call API with a model object, as its users call it."""

import cv2
import numpy as np
import pytest
import torch

from attnvis import visualize_attention_on_image
from attnvis.errors import ModelError
from attnvis.models.tiny import HELD_OUT_SEED, load_default_model, make_scene


@pytest.fixture()
def image_path(tmp_path):
    rgb, _ = make_scene(HELD_OUT_SEED + 3)
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def test_model_object_and_spec_give_the_same_files(image_path, tmp_path):
    a = visualize_attention_on_image(model=load_default_model(), image_path=image_path, output_dir=tmp_path / "a", device="cpu")
    b = visualize_attention_on_image(model="default", image_path=image_path, output_dir=tmp_path / "b", device="cpu", backend="torch")
    assert [p.name for p in a.files] == [p.name for p in b.files] and len(a.files) == 8
    for pa, pb in zip(a.files, b.files):
        np.testing.assert_array_equal(cv2.imread(str(pa)), cv2.imread(str(pb)))


def test_timm_model_object(image_path, tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64)
    result = visualize_attention_on_image(model=model, image_path=image_path, output_dir=tmp_path, layer=1, save_raw=True)
    assert np.load(tmp_path / "attn_raw_layer_1.npy").shape == (1, 3, 17, 17)  # CLS + 4x4 patches
    assert len(result.files) == 3


def test_unknown_model_object_is_a_clear_error(image_path, tmp_path):
    with pytest.raises(ModelError, match="attnvis_tokens"):
        visualize_attention_on_image(model=torch.nn.Linear(2, 2), image_path=image_path, output_dir=tmp_path)
