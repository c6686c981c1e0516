"""The device preprocessing (torch, run here on the CPU) equals the CPU path's ``preprocess`` bit for bit."""

import numpy as np
import pytest

from attnvis.metadata import Preprocess
from attnvis.runtime import _resample_torch as rt
from attnvis.runtime.images import preprocess

torch = pytest.importorskip("torch")

SHAPES = [(48, 64), (61, 45), (20, 20), (7, 90), (300, 40)]


@pytest.mark.parametrize("pre", [
    Preprocess(size=(24, 24), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),
    Preprocess(size=(24, 24), resize_short=True, crop_pct=0.875, interpolation="bicubic"),
    Preprocess(size=(16, 20), resize_short=True, crop_pct=1.0, interpolation="lanczos", channel_order="BGR"),
    Preprocess(size=(20, 20), resize_short=True, crop_pct=0.9, scale=1.0),
], ids=["bilinear", "bicubic-crop", "lanczos-bgr-nonsquare", "unscaled"])
def test_device_preprocess_equals_cpu_preprocess(pre):
    ok, why = rt.supported(pre)
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]
    images.append(images[0][::-1].copy())  # two of one size: resized together
    got = rt.preprocess_tensors([torch.from_numpy(im) for im in images], pre)
    want = preprocess(images, pre)
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.numpy().view(np.int32), want.view(np.int32))


def test_plan_matches_the_cpu_sizes():
    from attnvis.batch.feed import resize_plan

    pre = Preprocess(size=(24, 24), resize_short=True, crop_pct=0.875)
    for shape in SHAPES:
        assert rt.plan(*shape, pre) == resize_plan(*shape, pre)


def test_unreproduced_filters_are_refused_with_a_reason():
    ok, why = rt.supported(Preprocess(size=(8, 8), interpolation="nearest"))
    assert not ok and "nearest" in why
