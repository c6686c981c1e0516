"""``attnvis.explain``'s pieces without an export: targets, the result object, refusals before any work."""

import numpy as np
import pytest

from attnvis.errors import InputError, ModelError
from attnvis.runtime.explain import Explanation, open_explainer, resolve_target

LABELS = ["tabby", "tiger cat", "Persian cat", "dog"]


def test_targets_top1_index_per_image_and_names():
    assert resolve_target(None, 3, 4).tolist() == [-1, -1, -1]
    assert resolve_target("top1", 2, 4).tolist() == [-1, -1]
    assert resolve_target(2, 3, 4).tolist() == [2, 2, 2]
    assert resolve_target([0, 3], 2, 4).tolist() == [0, 3]
    assert resolve_target(np.array([1, 2]), 2, 4).dtype == np.int64
    assert resolve_target("Tiger Cat", 2, 4, LABELS).tolist() == [1, 1]
    assert resolve_target(["dog", "2"], 2, 4, LABELS).tolist() == [3, 2]


@pytest.mark.parametrize("target, match", [
    (4, r"out of range: the model has 4 classes \(0\.\.3\); e\.g\. 'tabby'"),
    (-2, "out of range"),
    ("lion", r"no class of this model; valid names: 'tabby', 'tiger cat'"),
    ([1, 2, 3], "3 entries for 2 images"),
])
def test_bad_targets_are_one_line(target, match):
    with pytest.raises(InputError, match=match):
        resolve_target(target, 2, 4, LABELS)


def test_names_without_labels_are_refused():
    with pytest.raises(InputError, match="records no class names; give a class index 0..3"):
        resolve_target("tabby", 1, 4, None)


def test_explanation_prediction_and_probabilities():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
    ex = Explanation("gae", np.zeros((2, 2, 2), np.float32), np.array([2, 0]), logits, labels=["a", "b", "c"])
    assert ex.prediction.tolist() == [1, 0]
    np.testing.assert_allclose(ex.probabilities.sum(1), 1.0, rtol=1e-6)
    p = np.exp(2) / (1 + np.exp(2) + np.exp(1))
    np.testing.assert_allclose(ex.probability[0], p, rtol=1e-6)
    assert ex.target_probability[0] < ex.probability[0] and ex.label(2) == "c"


def test_unknown_method_and_backend_refused_before_work():
    with pytest.raises(InputError, match="choose from attention, rollout, gae, grad-rollout"):
        open_explainer("no-such-model.onnx", ["lime"])
    with pytest.raises(InputError, match="backend 'tpu'"):
        open_explainer("default", ["gae"], backend="tpu")
    with pytest.raises(InputError, match="model file not found"):
        open_explainer("no-such-model.onnx", ["gae"])


def test_windowed_model_is_refused():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from attnvis.explain.trace import Options
    from attnvis.export.explain import explain_metadata
    from attnvis.metadata import Preprocess
    from attnvis.sources import ModelSource
    from attnvis.sources.timm import window_layout

    torch.manual_seed(0)
    swin = timm.models.swin_transformer.SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16,
                                                        depths=(1, 1), num_heads=(1, 1), num_classes=3).eval()
    source = ModelSource(swin, (torch.zeros(2, 3, 32, 32),), window_layout(swin, (32, 32)), Preprocess(size=(32, 32)),
                         "swin-test")
    with pytest.raises(ModelError, match="windowed attention \\(Swin\\) has no CLS row"):
        explain_metadata(source, ["gae"], Options())
