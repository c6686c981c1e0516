"""The Python API's contract: shapes and types, inputs left as they were, one clear error per bad argument."""

from __future__ import annotations

import numpy as np
import pytest

from attnvis import faithfulness as F
from attnvis.errors import InputError
from tests.faithfulness.conftest import grid_maps, model_input, photos


@pytest.fixture(scope="module")
def inputs(random_pair):
    _, session = random_pair
    pre = session.metadata.preprocess
    x = model_input(photos(pre.size)[:3], pre)
    maps = grid_maps(3, session.metadata.tokens.grid, seed=4)  # patch grids: upsampled by the metrics
    return session, x, maps, np.array([0, 1, 2])


def test_every_metric_leaves_its_inputs_unmodified(inputs):
    session, x, maps, target = inputs
    x0, maps0, target0 = x.copy(), maps.copy(), target.copy()
    F.deletion(session, x, maps, step=100)
    F.insertion(session, x, maps, step=100)
    F.perturbation(session, x, maps, target, negative=True)
    F.road(session, x, maps, target, percentiles=(50,), order="lerf")
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 8:20, 8:20] = True
    F.pointing_game(maps, masks), F.relevance_mass(maps, masks), F.relevance_rank(maps, masks)
    assert np.array_equal(x, x0) and np.array_equal(maps, maps0) and np.array_equal(target, target0)


def test_patch_grid_maps_equal_maps_upsampled_first(inputs):
    import cv2

    session, x, maps, target = inputs
    full = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_LINEAR) for m in maps])
    assert np.array_equal(F.deletion(session, x, maps, step=64)[0], F.deletion(session, x, full, step=64)[0])
    assert np.array_equal(F.perturbation(session, x, maps, target)[0], F.perturbation(session, x, full, target)[0])


def test_road_noise_is_seeded_and_changes_scores(inputs):
    session, x, maps, target = inputs
    a = F.road_combined(session, x, maps, target, noise=0.5, seed=1)
    b = F.road_combined(session, x, maps, target, noise=0.5, seed=1)
    quiet = F.road_combined(session, x, maps, target, noise=0.0)
    assert a.dtype == np.float32 and a.shape == (3,)
    assert np.array_equal(a, b) and not np.allclose(a, quiet, atol=1e-6)


def test_perturbation_step_zero_is_the_clean_prediction(inputs):
    session, x, maps, target = inputs
    clean = session.run(x).outputs[session.metadata.model_outputs[0]].argmax(1) == target
    for baseline in ("black", 0.0, -3.0):
        hits, auc = F.perturbation(session, x, maps, target, baseline=baseline)
        assert hits.shape == (3, 10) and hits.dtype == bool and isinstance(auc, float)
        assert hits[:, 0].tolist() == clean.tolist()


@pytest.mark.parametrize("call, needle", [
    (lambda s, x, m, t: F.deletion(s, x, m[:, 0]), "[B, H, W]"),
    (lambda s, x, m, t: F.deletion(s, x, np.zeros((3, 40, 20), np.float32)), "do not match"),  # larger than the input
    (lambda s, x, m, t: F.insertion(s, x, m[:2]), "B = 3"),
    (lambda s, x, m, t: F.deletion(s, x, m, step=0), "step"),
    (lambda s, x, m, t: F.road(s, x, m, t, order="up"), "morf"),
    (lambda s, x, m, t: F.road(s, x, m, t, percentiles=(120,)), "percentiles"),
    (lambda s, x, m, t: F.road(s, x, m, t[:2]), "target"),
    (lambda s, x, m, t: F.perturbation(s, x, m, t, baseline="grey"), "black"),
    (lambda s, x, m, t: F.pointing_game(m, np.ones((3, 8), bool)), "masks"),
    (lambda s, x, m, t: F.deletion(s, x[0], m), "[B, C, H, W]"),
])
def test_bad_arguments_raise_one_clear_error(inputs, call, needle):
    session, x, maps, target = inputs
    with pytest.raises(InputError) as err:
        call(session, x, maps, target)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_imputation_with_nothing_kept_gives_zeros_and_nothing_removed_is_identity():
    from attnvis.faithfulness._impute import impute

    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(np.float32)
    removed = np.zeros((2, 9, 7), bool)
    removed[1] = True
    out = impute(x, removed)
    assert np.array_equal(out[0], x[0]) and np.array_equal(out[1], np.zeros_like(x[1]))
