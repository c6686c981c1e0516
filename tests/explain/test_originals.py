"""Each method equals its authors' code, image by image, on seeded random timm, Hugging Face and torchvision ViTs.

The references (``explain_reference.py``) are batch-1 code following the originals; attnvis runs the batch at
once (torch backend, and the exported graph on ONNX Runtime in ``test_graph_equals_torch_backend``).
q/k weights are scaled so that attention is far from uniform and the gradients far from zero.
Tolerance: 1e-4 of each map's largest magnitude.
"""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import explain_reference as ref  # noqa: E402

from attnvis.explain.methods import METHODS  # noqa: E402
from attnvis.explain.trace import Options, explain_pass  # noqa: E402
from attnvis.sources import module_source  # noqa: E402

CLASSES = 7
ORIGINAL = [m for m in METHODS if m != "gradcam"]  # gradcam: test_gradcam_equals_pytorch_grad_cam
OPTIONS = [Options(0, 0.9), Options(1, 0.5)]


def timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3,
                                                             num_heads=4, num_classes=CLASSES)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:64] *= 12.0  # q and k rows
    return model.eval()


def hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3,
                                    num_attention_heads=4, intermediate_size=64, num_labels=CLASSES,
                                    attn_implementation="eager", initializer_range=0.2)
    model = transformers.ViTForImageClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")):
                p *= 3.0
    return model.eval()


def torchvision_vit():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4,
                                                           hidden_dim=32, mlp_dim=64, num_classes=CLASSES)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)  # torchvision starts the head at zero: no gradient at all
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_weight[:64] *= 4.0
    return model.eval()


FAMILIES = {"timm": timm_vit, "hf": hf_vit, "torchvision": torchvision_vit}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = FAMILIES[request.param]()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    return request.param, model, x


def _close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Assert equality within 1e-4 of the map's largest magnitude; return that magnitude."""
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale + 1e-12, f"{what}: max |diff| {err:.3e} > 1e-4 × {scale:.3e}"
    return scale


@pytest.mark.parametrize("options", OPTIONS, ids=["start0-discard0.9", "start1-discard0.5"])
def test_methods_equal_originals_image_by_image(family, options):
    """In float64: LRP's safe divisions amplify float32 rounding (1e-8 on maps of 1e-4) where the
    two sides merely order their sums differently; the float32 graph is checked against this same
    torch code in tests/export/test_explain_export.py."""
    name, model, x = family
    model, x = copy.deepcopy(model).double(), x.double()
    target = torch.tensor([-1, 3, 6, -1])
    source = module_source(model)
    outputs, relevance = explain_pass(model, (x,), target, ORIGINAL, source.tokens, options)
    scales = {m: [] for m in ORIGINAL}
    for b in range(x.shape[0]):
        want = ref.all_methods(model, x[b:b + 1], int(target[b]), options.start_layer, options.discard_ratio)
        np.testing.assert_allclose(outputs[0][1][b].numpy(), want["logits"].numpy(), atol=1e-4)  # same forward
        for method in ORIGINAL:
            scales[method].append(_close(relevance[method][b].numpy(), want[method].numpy(), f"{name} {method} image {b}"))
    vacuous = [m for m, s in scales.items() if sum(v > 0 for v in s) < 2]
    assert not vacuous, f"{name}: maps all zero for most images (a vacuous comparison): {vacuous}"


def test_attention_is_not_uniform(family):
    """The scaled q/k give peaked maps: the comparison above is not between near-constant maps."""
    _, model, x = family
    weights = ref.weights_of(model)
    _, saved, _ = ref.reference_forward(weights, ref.first_block_input(model, weights, x[:1]))
    n = saved[0]["attn"].shape[-1]
    assert all(float(s["attn"].amax(dim=-1).mean()) > 4.0 / n for s in saved)  # uniform rows: 1 / n


def test_gradcam_equals_pytorch_grad_cam(family):
    """pytorch-grad-cam's ViT recipe (usage_examples/vit_example.py) as the oracle: GradCAM on the last block's
    norm1 with the reshape transform; its output is min-max scaled and resized, so ours is scaled the same way."""
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    cv2 = pytest.importorskip("cv2")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name, model, x = family
    targets = [2, 5, 0, 3]
    source = module_source(model)
    _, relevance = explain_pass(model, (x,), torch.tensor(targets), ["gradcam"], source.tokens)
    layer = {"timm": lambda m: m.blocks[-1].norm1, "hf": lambda m: ref.weights_of(m).block_modules[-1].layernorm_before,
             "torchvision": lambda m: m.encoder.layers[-1].ln_1}[name](model)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            out = self.inner(images)
            return out.logits if hasattr(out, "logits") else out

    def reshape_transform(tensor, height=4, width=4):
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    with grad_cam.GradCAM(model=Logits(model), target_layers=[layer], reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    for b in range(x.shape[0]):
        raw = relevance["gradcam"][b].numpy().reshape(4, 4)
        assert raw.max() > 0
        ours = (raw - raw.min()) / (1e-7 + (raw - raw.min()).max())
        ours = cv2.resize(ours, (32, 32))
        ours = (ours - ours.min()) / (1e-7 + (ours - ours.min()).max())
        np.testing.assert_allclose(ours, theirs[b], atol=1e-4, err_msg=f"{name} gradcam image {b}")


def test_relevance_row_is_a_row_chain_not_a_product(family):
    """rollout with start_layer = L-1 is the last layer's normalized (Ā + I) CLS row: the chain starts at the top."""
    _, model, x = family
    source = module_source(model)
    outputs, relevance = explain_pass(model, (x[:1],), torch.tensor([-1]), ["rollout", "attention"], source.tokens,
                                      Options(start_layer=2))
    weights = ref.weights_of(model)
    _, saved, _ = ref.reference_forward(weights, ref.first_block_input(model, weights, x[:1]))
    mean = saved[-1]["attn"].detach()[0].mean(0) + torch.eye(saved[-1]["attn"].shape[-1])
    want = (mean / mean.sum(-1, keepdim=True))[0, 1:]
    _close(relevance["rollout"][0].numpy(), want.numpy(), "rollout start_layer=L-1")


@pytest.mark.parametrize("name", ["hf", "torchvision"])
def test_graph_equals_torch_backend(name, tmp_path):
    """Every method traced into one ONNX graph (HF's eager attention, torchvision's MultiheadAttention):
    ONNX Runtime on a batch of 3 equals the torch backend within 2e-5 of each map's largest value
    (transformer-attribution: 1e-3, see attnvis.export.explain.LRP_TOLERANCE) (timm: tests/export)."""
    import onnxruntime as ort

    from attnvis.export.explain import export_explain

    model = FAMILIES[name]()
    source = module_source(model)
    path = tmp_path / f"{name}.onnx"
    report = export_explain(source, path, list(METHODS), Options(1, 0.5))
    assert report.ok
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = np.array([-1, 4, 0], np.int64)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy(), "target": target})
    _, relevance = explain_pass(model, (x,), torch.as_tensor(target), list(METHODS), source.tokens, Options(1, 0.5))
    for i, method in enumerate(METHODS, start=1):
        want = relevance[method].numpy()
        # float32 gradients through near-saturated softmax rows (HF here) differ by ~1.1e-5 of the map's max
        share = 1e-3 if method == "transformer-attribution" else 2e-5
        assert np.abs(got[i] - want).max() <= share * np.abs(want).max() + 1e-9, method
