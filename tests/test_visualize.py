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


def test_result_carries_the_maps_it_rendered(tmp_path):
    from attnvis import visualize_attention_on_image
    from attnvis.models import sample_image_path
    from attnvis.render import attention_grid

    result = visualize_attention_on_image(None, sample_image_path(), tmp_path / "a")
    assert sorted(result.maps) == sorted(result.raw) == result.layers == [0, 1, 2, 3]
    for i in result.layers:
        assert result.raw[i].ndim == 3  # (heads, Q, K) as captured for this image
        np.testing.assert_array_equal(result.maps[i], attention_grid(result.raw[i], _tokens()))
    per_head = visualize_attention_on_image(None, sample_image_path(), tmp_path / "b", layer=1, avg_heads=False)
    assert per_head.maps[1].shape[0] == per_head.raw[1].shape[0]  # one grid per head


def _tokens():
    from attnvis.models.tiny import DEFAULT_TOKENS

    return DEFAULT_TOKENS


def test_figures_from_the_command_line(tmp_path):
    from PIL import Image

    from attnvis.cli import main
    from attnvis.models import sample_image_path
    from attnvis.render import attention_grid, attention_rollout, render_map
    from attnvis.runtime import load_image, open_model

    out = tmp_path / "figs"
    assert main(["visualize", "--image", str(sample_image_path()), "--output", str(out), "--rollout",
                 "--discard-ratio", "0.2", "--head-fusion", "max", "--contact-sheet", "--gif"]) == 0
    image = load_image(sample_image_path())
    maps = open_model(None).run_images([image])
    joint = attention_rollout([m[0] for m in maps.maps], "max", 0.2)
    _, want = render_map(attention_grid(joint, maps.metadata.tokens), image)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "attention_rollout.png")), want)
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > sheet.height  # 4 layers x (mean + 4 heads) tiles
    with Image.open(out / "layers.gif") as gif:
        assert gif.n_frames == 4


def test_rollout_needs_full_maps(tmp_path, capsys):
    from attnvis.cli import main
    from attnvis.models import sample_image_path

    model = tmp_path / "mean.onnx"
    assert main(["export", "--model", "default", "--reduce", "mean-heads", "--output", str(model)]) == 0
    capsys.readouterr()
    code = main(["visualize", "--image", str(sample_image_path()), "--model", str(model), "--rollout",
                 "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "--reduce mean-heads" in err and "--rollout" in err
