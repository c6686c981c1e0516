"""The map store defends itself: damaged, truncated, deleted and copied shards, shards rewritten under a reader,
changed sources, a full disk, and renders that would overwrite the batch or each other."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import attnvis
from attnvis.batch.lock import LOCK_NAME
from attnvis.batch.manifest import MANIFEST, load
from attnvis.cli import main
from attnvis.errors import AttnvisWarning, InputError
from attnvis.models.tiny import make_scene

pq = pytest.importorskip("pyarrow.parquet", reason='the map store needs pyarrow: pip install "attnvis[maps]"')

N = 8  # images, in shards of 3: part-000000 (3), part-000001 (3), part-000002 (2)


def make_images(folder: Path, n: int = N, suffix: str = "png") -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"s{i % 2}" / f"{i:03d}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cv2.resize(make_scene(i)[0], (64, 48), interpolation=cv2.INTER_AREA)).save(path)
        paths.append(path)
    return paths


def batch(model: str, inputs: Path, out: Path, *args: str) -> int:
    return main(["batch", str(inputs), "--output", str(out), "--model", model, "--device", "cpu", "--no-progress",
                 "--batch-size", "4", "--save", "maps", *args])


def render(out: Path, target: Path, *args: str) -> int:
    return main(["render", str(out), "--output", str(target), *args])


def one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def shard(out: Path, n: int) -> Path:
    return out / "maps" / f"part-{n:06d}.parquet"


def keys_of(path: Path) -> list[str]:
    return pq.read_table(path, columns=["image"]).column("image").to_pylist()


def quiet_load(out: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sound store says nothing
        return attnvis.load_maps(out)


@pytest.fixture(scope="module")
def made(tiny_batch_model, tmp_path_factory) -> Path:
    from attnvis.batch import store as st

    root = tmp_path_factory.mktemp("made")
    make_images(root / "in")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(st, "SHARD_ROWS", 3)
        assert batch(tiny_batch_model, root / "in", root / "out", "--no-gallery") == 0
    assert [len(keys_of(shard(root / "out", n))) for n in range(3)] == [3, 3, 2]
    return root


@pytest.fixture
def out(made, tmp_path) -> Path:
    """A copy of the module's store (its sources are the module's inputs)."""
    shutil.copytree(made / "out", tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture(scope="module")
def want(made) -> dict:
    store = quiet_load(made / "out")
    return {key: (store[key].copy(), store.rollout(key).copy(), store.thumbnail(key)) for key in store}


def same_as(out: Path, want: dict) -> bool:
    store = quiet_load(out)
    return list(store) == list(want) and store.table().num_rows == len(want) and all(
        np.array_equal(store[k], m) and np.array_equal(store.rollout(k), r) and store.thumbnail(k) == t
        for k, (m, r, t) in want.items())


def live_holder():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


# --------------------------------------------------------------------------- a reader and a writer at once (item 2)


def test_load_maps_never_returns_rows_of_a_shard_rewritten_after_it_was_opened(out):
    store = attnvis.load_maps(out)
    first = keys_of(shard(out, 0))
    other = out / "other.parquet"  # shard 1's rows put where shard 0 was: what a batch's rewrite does to a reader
    shutil.copy(shard(out, 1), other)
    os.replace(other, shard(out, 0))
    with pytest.raises(InputError, match=r"part-000000\.parquet was rewritten after the map store was opened") as err:
        store[first[0]]
    assert len(str(err.value).splitlines()) == 1
    assert store.thumbnail(keys_of(shard(out, 1))[0])  # the shards left as they were still read
    last = keys_of(shard(out, 2))
    shard(out, 2).unlink()
    with pytest.raises(InputError, match=r"part-000002\.parquet was removed"):
        store[last[0]]
    with pytest.raises(InputError, match=r"part-000000\.parquet was rewritten"):
        store.array()


def test_a_batch_does_not_start_while_render_reads_the_store(tiny_batch_model, made, out, capsys):
    from attnvis.batch.lock import ReaderLock

    before = (out / MANIFEST).read_bytes()
    with ReaderLock(out):  # a live attnvis render (this process) reading the store
        code = batch(tiny_batch_model, made / "in", out, "--resume")
        one_line(capsys, str(out), "is being read by attnvis render", f"pid {os.getpid()}")
        assert code == 2
    assert (out / MANIFEST).read_bytes() == before and not list(out.glob(".attnvis-read-*"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".attnvis-read-{dead.pid}-0000.lock"  # a render killed with -9
    stale.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0, "command": "render"}))
    assert batch(tiny_batch_model, made / "in", out, "--resume") == 0  # no live reader: it runs
    assert not stale.exists()


def test_render_does_not_start_while_a_batch_writes_the_store(out, tmp_path, capsys):
    holder = live_holder()
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": time.time()}))
        code = render(out, tmp_path / "r")
        one_line(capsys, "in use by another attnvis batch", f"pid {holder.pid}", "wait for it to finish")
        assert code == 2 and not (tmp_path / "r").exists() and not list(out.glob(".attnvis-read-*"))
    finally:
        holder.kill()
        holder.wait()
    assert render(out, tmp_path / "r") == 0  # the stale lock (its process gone) stops nothing


def test_a_render_reading_the_store_in_another_process_stops_a_batch(tiny_batch_model, made, out, tmp_path):
    code = f"""
import sys, time
from attnvis.batch import render_store as rs
real = rs.render_key
def slow(*args, **kwargs):
    print("rendering", flush=True)
    time.sleep(0.5)
    return real(*args, **kwargs)
rs.render_key = slow
from attnvis.cli import main
sys.exit(main(["render", {str(out)!r}, "--output", {str(tmp_path / 'r')!r}, "--workers", "1"]))
"""
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "rendering"
        assert batch(tiny_batch_model, made / "in", out, "--resume") == 2
    finally:
        assert reader.wait(timeout=120) == 0
    assert len(list((tmp_path / "r").rglob("*_layer_*"))) == N * 4  # every image, from the maps it indexed


# --------------------------------------------------------------------------- damaged shards (item 3, truncated)


def corrupt(path: Path) -> None:
    """XOR a few bytes inside layer 0's data in row group 0 (inside its compressed page)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    column = next(meta.column(c) for c in range(meta.num_columns) if meta.column(c).path_in_schema.startswith("layer_0"))
    at = column.data_page_offset + column.total_compressed_size - 6
    data = bytearray(path.read_bytes())
    for i in range(3):
        data[at + i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_damaged_shard_is_named_in_one_line_and_resume_redoes_its_images(tiny_batch_model, made, out, want, tmp_path,
                                                                          capsys, damage):
    victim = shard(out, 1)
    lost = keys_of(victim)
    if damage == "corrupt":
        corrupt(victim)
        store = attnvis.load_maps(out)  # the keys are readable; the maps are not
        with pytest.raises(InputError, match=r"part-000001\.parquet: damaged map store shard") as err:
            store[lost[0]]
        assert "--resume" in str(err.value) and len(str(err.value).splitlines()) == 1
        assert np.array_equal(store[keys_of(shard(out, 0))[0]], want[keys_of(shard(out, 0))[0]][0])  # others read
    else:
        os.truncate(victim, victim.stat().st_size // 2)
        with pytest.raises(InputError, match=r"part-000001\.parquet: damaged map store shard"):
            attnvis.load_maps(out)
    capsys.readouterr()
    assert render(out, tmp_path / "r") == 2
    one_line(capsys, "part-000001.parquet: damaged map store shard", "--resume", "part-000001.parquet.damaged")
    assert batch(tiny_batch_model, made / "in", out, "--resume", "--no-gallery") == 0
    printed = capsys.readouterr().out
    assert f"{len(lost)} done, {N - len(lost)} skipped" in printed
    assert "part-000001.parquet is damaged" in printed and "moved aside to part-000001.parquet.damaged" in printed
    assert (out / "maps" / "part-000001.parquet.damaged").is_file()
    assert same_as(out, want)  # every image once, the values an undamaged run stores
    assert render(out, tmp_path / "r") == 0


def test_shards_carry_page_checksums(out):
    meta = pq.ParquetFile(shard(out, 0)).metadata
    assert meta.num_row_groups >= 1
    corrupt(shard(out, 0))
    with pytest.raises(OSError, match="CRC"):  # pyarrow's own check: the pages carry a CRC-32
        pq.ParquetFile(shard(out, 0), page_checksum_verification=True).read()


# --------------------------------------------------------------------------- deleted and copied shards (item 4)


def test_a_deleted_shard_is_reported_by_load_maps_and_render(tiny_batch_model, made, out, want, tmp_path, capsys):
    lost = keys_of(shard(out, 1))
    shard(out, 1).unlink()
    with pytest.warns(AttnvisWarning, match=rf"^{len(lost)} images the manifest records as done are not in the map store"):
        store = attnvis.load_maps(out)
    assert store.missing == sorted(lost) and len(store) == N - len(lost)
    assert render(out, tmp_path / "r") == 3
    printed = capsys.readouterr().out
    assert f"{N - len(lost)} images rendered" in printed
    assert f"{len(lost)} images the manifest records as done are not in the map store" in printed
    assert f"attnvis batch INPUT --output {out} --save maps --resume" in printed
    assert render(out, tmp_path / "r", "--image", lost[0]) == 2
    assert "the manifest records it as done, but no shard holds it" in capsys.readouterr().err
    assert batch(tiny_batch_model, made / "in", out, "--resume", "--no-gallery") == 0
    assert same_as(out, want)


def test_a_copied_shard_is_read_once_and_removed_by_the_next_batch(tiny_batch_model, made, out, want, capsys):
    shutil.copy(shard(out, 1), shard(out, 99))
    with pytest.warns(AttnvisWarning, match=r"part-000099\.parquet: 3 images stored twice"):
        store = attnvis.load_maps(out)
    assert list(store) == list(want) and store.table().num_rows == N and store.array().shape[0] == N
    assert all(store.locations()[k][0] == 1 for k in keys_of(shard(out, 1)))  # the copy the manifest names
    assert batch(tiny_batch_model, made / "in", out, "--resume", "--no-gallery") == 0
    printed = capsys.readouterr().out
    assert f"0 done, {N} skipped" in printed and "part-000099.parquet: 3 images stored twice" in printed
    assert not shard(out, 99).exists() and same_as(out, want)


# --------------------------------------------------------------------------- changed sources (item 5)


@pytest.mark.parametrize("same_length", [False, True])
def test_render_names_a_source_replaced_by_another_picture_of_the_same_size(tiny_batch_model, tmp_path, capsys,
                                                                            same_length):
    suffix = "bmp" if same_length else "png"  # BMP: another picture, the same number of bytes
    paths = make_images(tmp_path / "in", 3, suffix)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--no-gallery") == 0
    victim = paths[1]
    stat = victim.stat()
    size = victim.stat().st_size
    Image.fromarray(cv2.resize(make_scene(7)[0], (64, 48), interpolation=cv2.INTER_AREA)).save(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its old time
    assert (victim.stat().st_size == size) == same_length
    capsys.readouterr()
    assert render(tmp_path / "out", tmp_path / "r") == 3
    printed = capsys.readouterr().out
    assert "2 images rendered" in printed and "s1/001." in printed and "changed since the batch stored its maps" in printed
    assert not (tmp_path / "r" / "s1" / f"001.{suffix}").exists()


# --------------------------------------------------------------------------- render's output (item 6, two renders)


@pytest.mark.parametrize("inside", ["", "rendered", "s0"])
def test_render_refuses_an_output_in_the_batch_folder(out, capsys, inside):
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert render(out, out / inside if inside else out) == 2
    one_line(capsys, str(out), "give a folder outside it")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_two_renders_into_one_folder_do_not_run_at_once(out, tmp_path, capsys):
    target = tmp_path / "r"
    target.mkdir()
    holder = live_holder()
    try:
        lock = {"pid": holder.pid, "host": os.uname().nodename, "started": time.time(), "command": "render"}
        (target / LOCK_NAME).write_text(json.dumps(lock))
        (target / ".attn_map.png.abc123.tmp").write_bytes(b"the other render's temporary file")
        assert render(out, target) == 2
        one_line(capsys, f"{target} is in use by another attnvis render (pid {holder.pid}")
        assert (target / ".attn_map.png.abc123.tmp").exists() and not list(target.rglob("*_layer_*"))
    finally:
        holder.kill()
        holder.wait()
    assert render(out, target) == 0 and not (target / LOCK_NAME).exists()


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_during_save_maps_names_the_shard_and_leaves_nothing(tiny_batch_model, made, tmp_path, capsys,
                                                                         monkeypatch):
    real = os.write

    def full(fd, data):
        if len(data) > 2000:  # a shard's bytes (a manifest line is shorter)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    out = tmp_path / "out"
    code = batch(tiny_batch_model, made / "in", out, "--no-gallery")
    err = one_line(capsys, f"{out / 'maps' / 'part-000000.parquet'}: no space left on device", "the disk is full",
                   "--resume")
    assert code == 1 and "closed file" not in err
    assert [p.name for p in (out / "maps").iterdir()] == [] and not (out / LOCK_NAME).exists()
    assert load(out / MANIFEST) == {}  # no line for an image whose maps are not stored
    monkeypatch.setattr(os, "write", real)
    assert batch(tiny_batch_model, made / "in", out, "--resume", "--no-gallery") == 0
    assert len(quiet_load(out)) == N


def test_the_manifest_reading_for_the_store_agrees_with_parsing_every_record(tmp_path):
    from attnvis.batch.manifest import Manifest, stored

    records = [{"key": 'we"ird\\kéy', "source": 'x"status":"ok","store":"maps/no.parquet"', "status": "failed"},
               {"key": "a", "status": "ok", "source_check": [1, 2, 3], "store": "maps/p.parquet"},
               {"key": "b", "status": "ok", "store": "maps/p.parquet"}, {"key": "b", "status": "failed"},
               {"key": 'we"ird\\kéy', "status": "ok", "store": "maps/q.parquet"},
               {"key": "éé", "status": "ok", "source_check": [4, 5, 6], "store": "maps/q.parquet"},
               {"status": "ok", "key": "c", "store": "maps/r.parquet"}, {"key": "d", "status": "ok", "files": []}]
    with Manifest(tmp_path / MANIFEST) as manifest:
        for record in records:
            manifest.append(record)
    with open(tmp_path / MANIFEST, "ab") as f:
        f.write(b'{"key":"torn","status":"ok","store":"maps/p.parquet"')  # a killed run's last line
    expected = {}
    for record in load(tmp_path / MANIFEST).values():
        if record["status"] == "ok" and record.get("store"):
            expected[record["key"]] = (record["store"], record.get("source_check"))
    assert stored(tmp_path / MANIFEST) == expected and sorted(expected) == ["a", "c", 'we"ird\\kéy', "éé"]
