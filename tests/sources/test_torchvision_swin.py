"""``torchvision:swin_t``: the real architecture from a local checkpoint (random weights), its layout and preprocessing.

Nothing is downloaded: the weights are a state dict of a seeded random
``swin_t`` saved here, as a user would pass with ``--weights``.
"""

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from attnvis.capture import capture_attention  # noqa: E402
from attnvis.cli import main  # noqa: E402
from attnvis.metadata import TokenLayout  # noqa: E402
from attnvis.models import sample_image_path  # noqa: E402
from attnvis.sources.torchvision import load_torchvision  # noqa: E402


def test_swin_t_loads_local_weights_at_a_nonsquare_size(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.swin_t().eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "swin_t.pth")
    source = load_torchvision("swin_t", weights=str(tmp_path / "swin_t.pth"), image_size=(224, 320))
    assert source.tokens == TokenLayout(grid=(56, 80), kind="grid") and source.name == "torchvision:swin_t"
    transforms = torchvision.models.Swin_T_Weights.DEFAULT.transforms()
    pre = source.preprocess
    assert (pre.size, pre.interpolation, pre.mean) == ((224, 320), "bicubic", tuple(transforms.mean))
    assert pre.crop_pct == transforms.crop_size[0] / transforms.resize_size[0]
    x = source.example_inputs[0]
    with torch.no_grad():
        want = reference(x)
    with capture_attention(source.model) as recorder, torch.no_grad():
        got = source.model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # the checkpoint's weights, the model's own result
    layouts = [info.window for info in recorder.layers]
    assert [lay.grid for lay in layouts[::2]] == [(56, 80), (28, 40), (14, 20), (14, 20), (14, 20), (7, 10)]
    # the last stage (7x10, padded to 7x14) is one window tall: torchvision shifts it along the columns only
    assert [lay.shift for lay in layouts[-2:]] == [0, (0, 3)] and layouts[1].shift == 3


@pytest.mark.parametrize("name,size", [("swin_t", 224), ("swin_v2_t", 256)])
def test_default_size_is_the_weights_crop(name, size):
    source = load_torchvision(name)  # check_layout ran: every block was captured with its window layout
    assert source.preprocess.size == (size, size) and source.tokens.grid == (size // 4, size // 4)


def test_visualize_runs_torchvision_swin(tmp_path, capsys):
    code = main(["visualize", "--image", str(sample_image_path()), "--model", "torchvision:swin_t", "--random-weights",
                 "--backend", "torch", "--layer", "11", "--save-raw", "--output", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    raw = np.load(tmp_path / "o" / "attn_raw_layer_11.npy")
    assert raw.shape == (1, 24, 49, 49)  # (windows, heads, w², w²): the last stage, 7x7, is one window
    np.testing.assert_allclose(raw.sum(-1), 1.0, atol=1e-5)  # softmax rows
    heatmaps = list((tmp_path / "o").glob("heatmap_layer_11_*.png"))
    assert len(heatmaps) == 1 and heatmaps[0].name.endswith("features.7.1.attn.png")
