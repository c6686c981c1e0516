"""Stored colormap tables against their sources (OpenCV, matplotlib)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from attnvis.render import COLORMAPS, DEFAULT_COLORMAP, colormap_table

RAMP = np.arange(256, dtype=np.uint8).reshape(256, 1)


@pytest.mark.parametrize("name, code", [("jet", cv2.COLORMAP_JET), ("turbo", cv2.COLORMAP_TURBO)])
def test_opencv_tables_exact(name, code):
    bgr = cv2.applyColorMap(RAMP, code).reshape(256, 3)
    np.testing.assert_array_equal(colormap_table(name), bgr[:, ::-1])


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma"])
def test_matplotlib_tables_exact(name):
    matplotlib = pytest.importorskip("matplotlib")
    rgba = matplotlib.colormaps[name](np.arange(256), bytes=True)
    np.testing.assert_array_equal(colormap_table(name), rgba[:, :3])


@pytest.mark.parametrize("name, code", [("viridis", cv2.COLORMAP_VIRIDIS), ("magma", cv2.COLORMAP_MAGMA)])
def test_matplotlib_tables_close_to_opencv_versions(name, code):
    # OpenCV rounds where matplotlib truncates: never more than one step apart
    bgr = cv2.applyColorMap(RAMP, code).reshape(256, 3)
    assert np.abs(colormap_table(name).astype(int) - bgr[:, ::-1]).max() <= 1


def test_gray_is_identity_and_jet_is_default():
    np.testing.assert_array_equal(colormap_table("gray"), np.repeat(RAMP, 3, axis=1))
    assert DEFAULT_COLORMAP == "jet" == COLORMAPS[0]


@pytest.mark.parametrize("name", COLORMAPS)
def test_tables_are_readonly_uint8(name):
    table = colormap_table(name)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    with pytest.raises(ValueError):
        table[0, 0] = 1


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="viridis"):
        colormap_table("parula")
