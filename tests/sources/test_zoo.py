"""timm and torchvision models: exported maps equal each library's own attention; layout and preprocessing right.

The named timm models are built with their real architecture (random
weights, ``pretrained=False``) and loaded through ``--weights``-style local
checkpoints; nothing is downloaded.
"""

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

import attnvis.capture.adapters.timm  # noqa: E402,F401  (registers the timm adapter)
from attnvis.errors import InputError, ModelError  # noqa: E402
from attnvis.export import export_onnx  # noqa: E402
from attnvis.sources._common import check_layout, conv_grid  # noqa: E402
from attnvis.sources.timm import load_timm  # noqa: E402
from attnvis.sources.torchvision import load_torchvision  # noqa: E402
from attnvis.metadata import TokenLayout  # noqa: E402
from attnvis.sources import ModelSource, load_source  # noqa: E402
from attnvis.runtime import OrtSession  # noqa: E402


def timm_oracle(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Each block's attention as timm computes it on its unfused path (``attn_drop`` input)."""
    maps, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_pre_hook(lambda m, args: maps.append(args[0].numpy())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def mha_oracle(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """torchvision ViT: each layer's ``nn.MultiheadAttention`` weights (need_weights, per head)."""
    inputs = []
    handles = [layer.self_attention.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0])))
               for layer in model.encoder.layers]
    with torch.no_grad():
        model(x)
    for handle in handles:  # before calling the modules again, or each call would record itself
        handle.remove()
    with torch.no_grad():
        return [m(h, h, h, need_weights=True, average_attn_weights=False)[1].numpy() for m, h in inputs]


def save_random(model: torch.nn.Module, path) -> str:
    """A local checkpoint of ``model``'s (seeded random) weights, as a user would pass with --weights."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def export_and_run(source: ModelSource, path, x: torch.Tensor):
    report = export_onnx(source, path)
    assert report.ok, report.table()
    return report, OrtSession(path, device="cpu").run(x.numpy())


TIMM_CASES = [
    # name, image_size, prefix names, grid
    ("vit_tiny_patch16_224", None, ("cls",), (14, 14)),
    ("deit_tiny_distilled_patch16_224", None, ("cls", "dist"), (14, 14)),
    ("vit_small_patch14_reg4_dinov2", (112, 112), ("cls", "reg0", "reg1", "reg2", "reg3"), (8, 8)),
    ("vit_tiny_patch16_224", (224, 320), ("cls",), (14, 20)),  # non-square: dynamic image size
]


@pytest.mark.parametrize("name,size,prefix,grid", TIMM_CASES, ids=lambda v: str(v))
def test_timm_maps_equal_timm_attention(name, size, prefix, grid, tmp_path):
    torch.manual_seed(0)
    # Off its default size a timm ViT runs with dynamic image size (position embeddings resampled per input).
    reference = timm.create_model(name, pretrained=False, **({} if size is None else {"dynamic_img_size": True}))
    weights = save_random(reference, tmp_path / ("w.safetensors" if "dinov2" in name else "w.pth"))

    source = load_timm(name, weights=weights, image_size=size)
    x = torch.randn(3, 3, *source.preprocess.size)
    _, got = export_and_run(source, tmp_path / "m.onnx", x)

    tokens = got.metadata.tokens
    assert (tokens.prefix_tokens, tokens.prefix_names, tokens.grid, tokens.cls_index) == (len(prefix), prefix, grid, 0)
    with torch.no_grad():  # the model's own output, on timm's default (fused) path
        logits = reference.eval()(x).numpy()
    np.testing.assert_allclose(got.outputs[got.metadata.model_outputs[0]], logits, atol=1e-4, rtol=0)
    oracle = timm_oracle(reference, x)
    assert len(got.maps) == len(oracle) == len(reference.blocks)
    n = len(prefix) + grid[0] * grid[1]
    for mine, theirs in zip(got.maps, oracle):
        assert mine.shape == (3, reference.blocks[0].attn.num_heads, n, n)
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)
    assert all(block.attn.fused_attn for block in source.model.blocks)  # the switch is restored after export


def test_timm_preprocess_comes_from_its_data_config():
    source = load_timm("deit_tiny_distilled_patch16_224")
    cfg = timm.data.resolve_data_config({}, model=source.model)
    pre = source.preprocess
    assert pre.size == cfg["input_size"][1:] == (224, 224)
    assert (pre.mean, pre.std, pre.interpolation, pre.crop_pct) == (cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"])
    assert pre.resize_short and source.name == "timm:deit_tiny_distilled_patch16_224"


def test_timm_spec_through_load_source_and_layout_for_gap_registers():
    source = load_source("timm:vit_medium_patch16_reg4_gap_256", random_weights=True)  # registers, no CLS: pooled by averaging
    assert source.tokens.prefix_names == ("reg0", "reg1", "reg2", "reg3")
    assert source.tokens.cls_index is None and source.tokens.grid == (16, 16)


def test_torchvision_vit_b_16_maps_equal_mha_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16().eval()
    weights = save_random(reference, tmp_path / "vit.safetensors")
    source = load_torchvision("vit_b_16", weights=weights)
    assert source.tokens == TokenLayout(prefix_tokens=1, grid=(14, 14), cls_index=0, prefix_names=("cls",))
    transforms = torchvision.models.ViT_B_16_Weights.DEFAULT.transforms()
    assert source.preprocess.crop_pct == transforms.crop_size[0] / transforms.resize_size[0]
    assert (source.preprocess.mean, source.preprocess.interpolation) == (tuple(transforms.mean), "bilinear")
    x = torch.randn(3, 3, 224, 224)
    _, got = export_and_run(source, tmp_path / "vit.onnx", x)
    oracle = mha_oracle(reference, x)
    assert len(got.maps) == len(oracle) == 12
    for mine, theirs in zip(got.maps, oracle):
        assert mine.shape == (3, 12, 197, 197)
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("load,name,match", [
    (load_timm, "resnet18", "no patch embedding"),
    (load_timm, "swinv2_tiny_window8_256", "windowed attention .*WindowAttention"),  # swin_* is stitched; v2 is not
    (load_torchvision, "resnet18", "'resnet18' \\(ResNet\\) is not a VisionTransformer"),
    (load_torchvision, "swin3d_t", "windowed attention \\(ShiftedWindowAttention3d\\)"),  # swin_* is stitched
])
def test_unsupported_families_say_what_was_found(load, name, match):
    with pytest.raises(ModelError, match=match):
        load(name)


@pytest.mark.parametrize("call,error,match", [
    (lambda: load_timm("vit_tiny_patch16_2244"), InputError, "timm has no model 'vit_tiny_patch16_2244'; similar: vit_tiny_patch16_224"),
    (lambda: load_torchvision("vit_z_99"), InputError, "torchvision has no model 'vit_z_99'.*vit_b_16"),
    (lambda: load_torchvision("vit_b_16", image_size=(224, 320)), InputError, "square"),
    (lambda: load_timm("vit_tiny_patch16_224", weights="/nonexistent/w.pth"), InputError, "weights file not found"),
])
def test_bad_names_and_paths(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_corrupt_or_mismatched_weights(tmp_path):
    corrupt = tmp_path / "bad.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights .*bad.pth"):
        load_timm("vit_tiny_patch16_224", weights=str(corrupt))
    other = save_random(timm.create_model("deit_tiny_distilled_patch16_224"), tmp_path / "deit.pth")
    with pytest.raises(ModelError, match="do not fit timm model 'vit_tiny_patch16_224'.*size mismatch for pos_embed"):
        load_timm("vit_tiny_patch16_224", weights=other)


def test_a_wrong_layout_is_caught_before_export():
    source = load_timm("deit_tiny_distilled_patch16_224")
    source.tokens = TokenLayout(prefix_tokens=1, grid=(14, 14), cls_index=0, prefix_names=("cls",))
    with pytest.raises(ModelError, match="attends over 198 tokens.*1 prefix \\+ \\(14, 14\\) patches = 197"):
        check_layout(source)


def test_conv_grid_handles_non_square_and_padding():
    conv = torch.nn.Conv2d(3, 8, kernel_size=16, stride=16)
    assert conv_grid(conv, (224, 320)) == (14, 20)
    assert conv_grid(torch.nn.Conv2d(3, 8, 7, stride=4, padding=3), (32, 48)) == (8, 12)


def test_cli_visualize_timm_with_local_weights(tmp_path):
    import cv2

    from attnvis.cli import main

    torch.manual_seed(0)
    weights = save_random(timm.create_model("vit_tiny_patch16_224"), tmp_path / "w.pth")
    image = np.random.default_rng(0).integers(0, 255, (180, 260, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.jpg"), image)
    out = tmp_path / "attn_vis"
    code = main(["visualize", "--model", "timm:vit_tiny_patch16_224", "--weights", weights,
                 "--image", str(tmp_path / "x.jpg"), "--layer", "11", "--save-raw", "--output", str(out)])
    assert code == 0
    raw = np.load(out / "attn_raw_layer_11.npy")
    assert raw.shape == (1, 3, 197, 197)  # CLS + 14×14 patches, as the model lays them out
    overlays = sorted(out.glob("attn_map_layer_11_*.png"))
    assert overlays and cv2.imread(str(overlays[0])).shape == (180, 260, 3)  # painted back onto the image
