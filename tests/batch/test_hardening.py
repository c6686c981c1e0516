"""The batch under faults: a second run into the same folder, outputs damaged between runs, Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnvis.batch.lock import LOCK_NAME, OutputLock
from attnvis.batch.manifest import MANIFEST
from attnvis.cli import main
from attnvis.errors import InputError


def make_inputs(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def batch(model: str, *args: str) -> int:
    return main(["batch", *args, "--model", model, "--device", "cpu", "--no-progress", "--batch-size", "2"])


def test_a_live_lock_stops_a_second_run_and_leaves_the_first_untouched(tiny_batch_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": time.time()}))
        (out / ".other.png.abc123.tmp").write_bytes(b"another run's temporary file")
        code = batch(tiny_batch_model, str(make_inputs(tmp_path / "in")), "--output", str(out))
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1
        assert f"pid {holder.pid}" in err and "another attnvis batch" in err
        assert (out / ".other.png.abc123.tmp").exists()  # the holder's files are not swept
        assert not (out / MANIFEST).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tiny_batch_model, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    assert batch(tiny_batch_model, str(make_inputs(tmp_path / "in")), "--output", str(out)) == 0
    assert not (out / LOCK_NAME).exists()


def test_lock_is_exclusive_within_one_process(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(InputError, match="in use by another attnvis batch"):
            with OutputLock(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_resume_redoes_an_image_whose_files_do_not_match_the_manifest(tiny_batch_model, tmp_path, capsys, damage):
    args = (str(make_inputs(tmp_path / "in")), "--output", str(tmp_path / "out"))
    assert batch(tiny_batch_model, *args) == 0
    victim = next((tmp_path / "out" / "2.png").glob("heatmap_layer_0_*.png"))
    good = victim.read_bytes()
    victim.write_bytes({"truncate": good[: len(good) // 2], "empty": b"",
                        "flip": good[:-20] + bytes([good[-20] ^ 1]) + good[-19:]}[damage])
    capsys.readouterr()
    assert batch(tiny_batch_model, *args, "--resume") == 0
    assert "1 done, 5 skipped" in capsys.readouterr().out
    assert victim.read_bytes() == good


def test_all_skipped_prints_no_rate(tiny_batch_model, tmp_path, capsys):
    args = (str(make_inputs(tmp_path / "in", 2)), "--output", str(tmp_path / "out"))
    assert batch(tiny_batch_model, *args) == 0
    capsys.readouterr()
    assert batch(tiny_batch_model, *args, "--resume") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "0 done, 2 skipped (already complete), 0 failed of 2 images: nothing to do"


def test_ctrl_c_prints_the_summary_and_the_resume_command(tiny_batch_model, tmp_path, capsys, monkeypatch):
    from attnvis.batch import local

    real, seen = local.render_item, []

    def interrupted(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "render_item", interrupted)
    inputs, out = make_inputs(tmp_path / "in"), tmp_path / "my out"
    code = main(["batch", str(inputs), "--output", str(out), "--model", tiny_batch_model, "--no-progress",
                 "--workers", "1", "--batch-size", "1"])
    captured = capsys.readouterr()
    assert code == 130
    assert "skipped (already complete)" in captured.out.splitlines()[0]
    assert f"attnvis batch {inputs} --output '{out}' --model {tiny_batch_model} --no-progress --workers 1 " \
           "--batch-size 1 --resume" in captured.err
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(local, "render_item", real)
    assert main(["batch", str(inputs), "--output", str(out), "--model", tiny_batch_model, "--no-progress",
                 "--resume"]) == 0
    assert len([line for line in (out / MANIFEST).read_text().splitlines() if '"ok"' in line]) >= 6
