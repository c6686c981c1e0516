"""Which files a batch reads: each real file once, however many paths lead to it; never its own outputs."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnvis.batch.inputs import discover
from attnvis.batch.manifest import MANIFEST
from attnvis.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symlinks")


def make_images(folder: Path, names: tuple[str, ...] = ("a.png", "sub/b.png")) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / name)
    return folder


def batch(model: str, *args: str) -> int:
    return main(["batch", *args, "--model", model, "--device", "cpu", "--no-progress", "--batch-size", "2", "--no-gallery"])


def manifest_keys(out: Path) -> list[str]:
    import json

    return sorted({json.loads(line)["key"] for line in (out / MANIFEST).read_text().splitlines()})


def test_a_glob_does_not_go_round_a_symlink_that_leads_back_up(tmp_path):
    folder = make_images(tmp_path / "dir")
    (folder / "loop").symlink_to(".")  # dir/loop/loop/... is dir again
    pattern = str(folder / "**" / "*.png")
    assert len(glob.glob(pattern, recursive=True)) > 10  # what glob alone makes of it
    assert [i.key for i in discover([pattern])] == ["a.png", "sub/b.png"]
    (folder / "sub" / "up").symlink_to("..")  # with two links glob's paths grow exponentially: 2^40
    assert [i.key for i in discover([pattern])] == ["a.png", "sub/b.png"]
    assert [i.key for i in discover([str(folder)])] == ["a.png", "sub/b.png"]  # a folder walk never followed links


def test_a_glob_still_follows_a_symlinked_folder_elsewhere(tmp_path):
    make_images(tmp_path / "elsewhere", ("c.png",))
    folder = make_images(tmp_path / "dir")
    (folder / "more").symlink_to(tmp_path / "elsewhere")
    assert [i.key for i in discover([str(folder / "**" / "*.png")])] == ["a.png", "more/c.png", "sub/b.png"]


def test_one_file_reached_by_several_paths_is_one_input(tmp_path):
    folder = make_images(tmp_path / "dir")
    (folder / "alias.png").symlink_to("a.png")
    (tmp_path / "link").symlink_to(folder)
    items = discover([str(folder), str(tmp_path / "link" / "a.png"), str(folder / "sub" / ".." / "a.png")])
    assert sorted(os.path.realpath(i.path) for i in items) == [str((folder / n).resolve()) for n in ("a.png", "sub/b.png")]
    assert len(items) == 2


def test_batch_reads_an_image_once_through_a_looping_glob(tiny_batch_model, tmp_path, capsys):
    folder = make_images(tmp_path / "dir", ("a.png",))
    (folder / "loop").symlink_to(".")
    assert batch(tiny_batch_model, str(folder / "**" / "*.png"), "--output", str(tmp_path / "out")) == 0
    assert capsys.readouterr().out.startswith("1 done, 0 skipped (already complete), 0 failed of 1 images")
    assert manifest_keys(tmp_path / "out") == ["a.png"]


def test_the_output_folder_reached_through_a_symlink_is_not_an_input(tiny_batch_model, tmp_path, capsys):
    inputs, out = make_images(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (inputs / "results").symlink_to(out)  # a glob over the inputs enters the output folder this way
    for _ in range(2):  # the second run would find the first one's PNGs
        assert batch(tiny_batch_model, str(inputs / "**" / "*.png"), "--output", str(out)) == 0
    assert manifest_keys(out) == ["a.png", "sub/b.png"]
    assert capsys.readouterr().out.count("2 done, 0 skipped (already complete), 0 failed of 2 images") == 2


def test_an_output_named_through_a_symlink_is_not_walked(tiny_batch_model, tmp_path, capsys):
    inputs = make_images(tmp_path / "in")
    (inputs / "out").mkdir()
    (tmp_path / "out_link").symlink_to(inputs / "out")  # the output lies inside the inputs
    for _ in range(2):
        assert batch(tiny_batch_model, str(inputs), "--output", str(tmp_path / "out_link")) == 0
    assert manifest_keys(inputs / "out") == ["a.png", "sub/b.png"]
    assert capsys.readouterr().out.count("2 done, 0 skipped (already complete), 0 failed of 2 images") == 2
    assert discover([str(inputs)], exclude=tmp_path / "out_link") == discover([str(inputs)], exclude=inputs / "out")
