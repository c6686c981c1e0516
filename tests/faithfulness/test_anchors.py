"""Each metric equals its anchor's code on the same weights, inputs and maps.

ROAD: pytorch-grad-cam 1.5.7 itself (noise off), within 1e-5. Deletion/insertion: RISE's
``CausalMetric`` semantics written out here in PyTorch (its code is not run), within 1e-5.
Perturbation: Chefer's script's steps written out in PyTorch, hits exactly. Localisation:
Quantus 0.6.0 itself, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnvis import faithfulness as F
from tests.faithfulness.conftest import grid_maps, model_input, photos

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["default", "random"])
def case(request, default_pair, random_pair):
    """(torch model, session, x [6, 3, H, W], maps [6, H, W] at input resolution, targets)."""
    import cv2

    net, session = default_pair if request.param == "default" else random_pair
    pre = session.metadata.preprocess
    x = model_input(photos(pre.size), pre)[:4]
    grids = grid_maps(len(x), session.metadata.tokens.grid, seed=1)
    maps = np.stack([cv2.resize(g, pre.size[::-1], interpolation=cv2.INTER_LINEAR) for g in grids])
    maps[-1] = np.random.default_rng(2).random(pre.size).astype(np.float32)  # one map at pixel resolution
    with torch.no_grad():
        targets = net(torch.from_numpy(x)).argmax(1).numpy()
    targets[0] = (targets[0] + 1) % 3  # one image explained for a class it does not predict
    return net, session, x, maps, targets


# --------------------------------------------------------------------------- ROAD (grad-cam itself)


def _gradcam_road(net, x, maps, targets, percentile, order):
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    confidence = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    remove = confidence.RemoveMostRelevantFirst if order == "morf" else confidence.RemoveLeastRelevantFirst
    metric = confidence.PerturbationConfidenceMetric(remove(percentile, road.NoisyLinearImputer(noise=0.0)))
    return metric(torch.from_numpy(x), maps, [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], net)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_gradcam_with_noise_off(case, order):
    net, session, x, maps, targets = case
    percentiles = (30, 75)
    ours = F.road(session, x, maps, targets, percentiles=percentiles, order=order, noise=0.0)
    assert ours.shape == (len(x), len(percentiles)) and ours.dtype == np.float32
    theirs = np.stack([_gradcam_road(net, x, maps, targets, p, order) for p in percentiles], axis=1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert np.abs(theirs).max() > 1e-3  # the perturbation moved the scores: the comparison means something


def test_road_combined_equals_gradcam_combined(case):
    net, session, x, maps, targets = case
    percentiles = (40, 80)
    morf = np.stack([_gradcam_road(net, x, maps, targets, p, "morf") for p in percentiles])
    lerf = np.stack([_gradcam_road(net, x, maps, targets, p, "lerf") for p in percentiles])
    theirs = (np.mean(np.float32(lerf), axis=0) - np.mean(np.float32(morf), axis=0)) / 2  # ROADCombined's formula
    ours = F.road_combined(session, x, maps, targets, percentiles=percentiles, noise=0.0)
    assert ours.shape == (len(x),) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_imputation_equals_gradcam_solver_on_every_removed_pixel():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from attnvis.faithfulness._impute import impute

    rng = np.random.default_rng(5)
    image = rng.standard_normal((3, 40, 56)).astype(np.float32)
    removed = np.zeros((3, 40, 56), bool)
    removed[0, 5:30, 10:50] = True  # one big hole
    removed[1] = rng.random((40, 56)) < 0.7  # scattered pixels, the image's edges too
    removed[2, :, :28] = True  # a whole side
    ours = impute(np.repeat(image[None], 3, 0), removed)
    for b in range(3):
        theirs = road.NoisyLinearImputer(noise=0.0)(torch.from_numpy(image), torch.from_numpy(np.float32(~removed[b])))
        np.testing.assert_allclose(ours[b], theirs.numpy(), atol=1e-5, rtol=0)
        assert np.array_equal(ours[b][:, ~removed[b]], image[:, ~removed[b]])  # kept pixels untouched


# --------------------------------------------------------------------------- RISE (its semantics, written here)


def _rise_gkern(klen, nsig):
    ndimage = pytest.importorskip("scipy.ndimage")
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = ndimage.gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = kern[1, 1] = kern[2, 2] = k
    return torch.from_numpy(kern.astype("float32"))


def _rise_single_run(model, img_tensor, explanation, mode, step):
    """RISE's ``CausalMetric.single_run`` (softmax model, substrate zeros or gkern blur), one image."""
    hw = explanation.size
    pred = model(img_tensor)
    c = int(pred.argmax(1)[0])
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = img_tensor.clone(), torch.zeros_like(img_tensor)
    else:
        start = torch.nn.functional.conv2d(img_tensor, _rise_gkern(11, 5), padding=11 // 2)
        finish = img_tensor.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        scores[i] = float(model(start)[0, c])
        if i < n_steps:
            coords = salient_order[:, step * i:step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return scores


@pytest.mark.parametrize("mode", ["del", "ins"])
@pytest.mark.parametrize("step", [224, 97])  # 97: a last step of fewer pixels
def test_deletion_insertion_equal_rise(case, mode, step):
    net, session, x, maps, _ = case
    curves, auc = (F.deletion if mode == "del" else F.insertion)(session, x, maps, step=step)
    n = -(-maps[0].size // step)
    assert curves.shape == (len(x), n + 1) and curves.dtype == np.float32 and auc.shape == (len(x),)
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    with torch.no_grad():
        theirs = np.stack([_rise_single_run(model, torch.from_numpy(x[b:b + 1]).clone(), maps[b], mode, step)
                           for b in range(len(x))])
    np.testing.assert_allclose(curves, theirs, atol=1e-5, rtol=0)
    rise_auc = (theirs.sum(1) - theirs[:, 0] / 2 - theirs[:, -1] / 2) / (theirs.shape[1] - 1)
    np.testing.assert_allclose(auc, rise_auc, atol=1e-5, rtol=0)
    assert np.ptp(theirs, axis=1).max() > 0.05  # the curves move


def test_gkern_equals_scipy_gaussian_filter():
    expected = _rise_gkern(11, 5)[0, 0].numpy()
    from attnvis.faithfulness.causal import gkern

    np.testing.assert_allclose(gkern(11, 5), expected, atol=1e-8, rtol=0)
    np.testing.assert_allclose(gkern(7, 2.0), _rise_gkern(7, 2.0)[0, 0].numpy(), atol=1e-8, rtol=0)


# --------------------------------------------------------------------------- Chefer (the script's steps, written here)


def _chefer_hits(net, data, vis, target, mean, std, negative):
    """The script's loop (scale='per'): steps 0.1 .. 0.9 from the clean image, pixels set to 0 before normalising."""
    def normalize(t):
        return (t - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]

    base_size = vis.shape[-1] * vis.shape[-2]
    hits = [(net(normalize(data.clone())).argmax(1) == target).numpy()]
    vis = (-vis if negative else vis).reshape(len(data), -1)
    for step in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]:
        _data = data.clone()
        _, idx = torch.topk(vis, int(base_size * step), dim=-1)
        idx = idx.unsqueeze(1).repeat(1, data.shape[1], 1)
        _data = _data.reshape(len(data), data.shape[1], -1).scatter_(-1, idx, 0).reshape(*data.shape)
        hits.append((net(normalize(_data)).max(1, keepdim=True)[1].squeeze(1) == target).numpy())
    return np.stack(hits, axis=1)


@pytest.mark.parametrize("negative", [False, True])
def test_perturbation_hits_equal_chefer(case, negative):
    net, session, _, maps, targets = case
    pre = session.metadata.preprocess
    data = photos(pre.size)[:4].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    mean, std = np.float32(pre.mean), np.float32(pre.std)
    x = ((torch.from_numpy(data) - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]).numpy()
    hits, auc = F.perturbation(session, x, maps, targets, negative=negative)
    assert hits.shape == (len(x), 10) and hits.dtype == bool
    with torch.no_grad():
        theirs = _chefer_hits(net, torch.from_numpy(data), torch.from_numpy(maps), torch.from_numpy(targets), mean, std, negative)
    assert np.array_equal(hits, theirs)
    assert auc == pytest.approx(np.trapezoid(theirs.mean(0), x=[0, .1, .2, .3, .4, .5, .6, .7, .8, .9]) * 100, abs=1e-12)


# --------------------------------------------------------------------------- Quantus itself


@pytest.mark.parametrize("name", ["PointingGame", "RelevanceMassAccuracy", "RelevanceRankAccuracy"])
def test_localisation_equals_quantus(name):
    quantus = pytest.importorskip("quantus")
    import cv2

    rng = np.random.default_rng(7)
    grids = rng.random((6, 6, 8)).astype(np.float32) - 0.2  # some negative relevance
    maps = np.stack([cv2.resize(g, (40, 30), interpolation=cv2.INTER_LINEAR) for g in grids])
    maps[1] = np.round(maps[1] * 4) / 4  # ties, at the maximum too
    maps[2] = 0.0
    masks = np.zeros((6, 30, 40), np.uint8)
    for b, (y0, x0) in enumerate(rng.integers(0, 20, (6, 2))):
        masks[b, y0:y0 + 9, x0:x0 + 15] = 1
    masks[3] = 0  # an empty mask
    x = rng.random((6, 3, 30, 40)).astype(np.float32)
    metric = getattr(quantus, name)(disable_warnings=True)
    theirs = np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(6, int), a_batch=maps[:, None], s_batch=masks[:, None],
                               channel_first=True))
    ours = {"PointingGame": F.pointing_game, "RelevanceMassAccuracy": F.relevance_mass,
            "RelevanceRankAccuracy": F.relevance_rank}[name](maps, masks)
    assert ours.shape == (6,)
    np.testing.assert_array_equal(ours, theirs.astype(ours.dtype))
