"""A caption batch writes per-word images; asking it for the map store is refused, not ignored."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnvis.cli import main


@pytest.mark.parametrize("flags", [["--save", "maps"], ["--save", "both"], ["--store-heads"]])
def test_a_captioner_refuses_the_map_store_before_any_work(tmp_path, capsys, flags):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    code = main(["batch", str(tmp_path / "in"), "--model", "default-captioner", "--output", str(out), "--device", "cpu",
                 "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert " ".join(flags) in err and "captioner" in err
    assert not out.exists()  # nothing written, nothing half-done
