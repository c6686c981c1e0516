"""``attnvis batch --engine ray`` on a two-node Ray cluster on loopback: same images as local, survives a lost node.

Each test starts its own cluster with ``ray start --block`` (a head and a
worker node, each with its own resources) and stops it at the end, even on
failure, by killing every process of each node's session (never ``ray
stop``, which would stop every Ray on the machine). Where the test may
create a network namespace (root, or unprivileged user namespaces), the
nodes and the driver run in one with only loopback up, so nothing listens
on or talks to a real interface.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.batch.manifest import MANIFEST, load
from attnvis.cli import main
from attnvis.models.tiny import make_scene
from attnvis.batch.run import EXIT_SOME_FAILED

N_IMAGES = 50
NODE_START_S = 180  # ray start on a loaded 2-core machine takes 20-40 s
JOB_TIMEOUT_S = 420
SEED_OVERLAY = "attn_map_layer_1_blocks.1.attn.png"


def ray_cli() -> str:
    pytest.importorskip("ray.data", reason='Ray is not installed: pip install "attnvis[ray]"')
    path = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not os.path.exists(path):
        pytest.skip("the ray command is not installed beside this Python")
    return path


def _netns_prefix() -> tuple[list[str], subprocess.Popen | None]:
    """A command prefix that enters a fresh network namespace with only loopback up, if one can be made."""
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return [], None
    root = os.geteuid() == 0
    holder = subprocess.Popen(["unshare", "--net", *([] if root else ["--map-root-user"]), "sh", "-c",
                               "ip link set lo up && exec sleep 3600"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if holder.poll() is not None:
        return [], None  # not permitted here: loopback address on the host's stack instead
    enter = ["nsenter", "-t", str(holder.pid), "--net"] + ([] if root else ["--user", "--preserve-credentials"])
    return enter + ["--"], holder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, from ``/proc/PID/stat``."""
    members = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "(comm)": state ppid pgrp session ...
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(pid))
    return members


def _running_stages(sid: int) -> list[str]:
    """Titles of session ``sid``'s Ray workers that run one of our stages (``ray::MapBatches(render_batch)``, ...)."""
    titles = []
    for pid in _session_members(sid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(("ray::MapBatches", "ray::MapWorker")) and not title.endswith("__init__"):
            titles.append(title)
    return titles


def _kill_session(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL every process of ``proc``'s session (a Ray node's processes and its workers), until none is left."""
    deadline = time.monotonic() + timeout
    while (members := _session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    proc.poll()


class LoopbackCluster:
    """A head and worker nodes on 127.0.0.1, each ``ray start --block`` in its own session."""

    def __init__(self, tmp: Path):
        self.ray = ray_cli()
        self.tmp, self.port, self.nodes = tmp, _free_port(), {}
        self.ray_tmp = tempfile.mkdtemp(prefix="attnvis-ray-", dir="/tmp")  # short: Ray's socket paths have 107 bytes
        self.prefix, self.holder = _netns_prefix()
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        self.address = f"127.0.0.1:{self.port}"

    def start(self, name: str, resources: dict, head: bool = False) -> None:
        """Start a node and wait until it says it runs."""
        role = ["--head", f"--port={self.port}", "--include-dashboard=false",
                f"--temp-dir={self.ray_tmp}"] if head else [f"--address={self.address}"]
        log = self.tmp / f"{name}.log"
        cmd = [*self.prefix, self.ray, "start", *role, "--node-ip-address=127.0.0.1", "--num-cpus=2",
               f"--resources={json.dumps(resources)}", "--object-store-memory=200000000",
               "--disable-usage-stats", "--block"]
        self.nodes[name] = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=open(log, "wb"),
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + NODE_START_S
        while b"Ray runtime started" not in log.read_bytes():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def running_stages(self, name: str) -> list[str]:
        return _running_stages(self.nodes[name].pid)

    def kill(self, name: str) -> None:
        _kill_session(self.nodes.pop(name))

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:  # workers first, then the head
            self.kill(name)
        if self.holder is not None:
            _kill_session(self.holder)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def batch(self, *args: str) -> subprocess.Popen:
        """``attnvis batch --engine ray`` against this cluster, as a driver process on the head's namespace."""
        cmd = [*self.prefix, sys.executable, "-m", "attnvis", "batch", *args, "--engine", "ray",
               "--address", self.address, "--device", "cpu", "--no-progress"]
        return subprocess.Popen(cmd, env=self.env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture
def cluster(tmp_path):
    """A head (``{"attnvis_head": 1}``) and one worker node (``{"attnvis_worker": 1}``), 2 CPUs each."""
    nodes = LoopbackCluster(tmp_path)
    try:
        nodes.start("head", {"attnvis_head": 1}, head=True)
        nodes.start("worker", {"attnvis_worker": 1})
        yield nodes
    finally:
        nodes.stop()


def make_inputs(folder: Path, n: int, size=(160, 120)) -> list[str]:
    """``n`` scenes in two subfolders (PNG and JPEG), one not-an-image and one empty file; their keys."""
    keys = []
    for i in range(n):
        key = f"{'ab'[i % 2]}/scene_{i:03d}.{'png' if i % 3 else 'jpg'}"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cv2.resize(make_scene(i)[0], size, interpolation=cv2.INTER_AREA)).save(folder / key)
        keys.append(key)
    (folder / "a" / "text.jpg").write_text("not an image\n")
    (folder / "b" / "empty.png").write_bytes(b"")
    return keys + ["a/text.jpg", "b/empty.png"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the manifest (its lines carry times), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the ray job did not finish in {JOB_TIMEOUT_S} s:\n{out.decode(errors='replace')[-3000:]}")
    return proc.returncode, out.decode(errors="replace")


def differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """Files whose contents differ: PNGs by their decoded pixels, everything else byte for byte.

    Rarely a PNG written by a Ray worker process differs in its compressed
    bytes from the local engine's while its pixels are identical (ISA-L's
    deflate; docs/scaling-out.md, "Note on PNG bytes"). The local engine and
    its ``--resume`` give byte-identical files (tests/test_pipeline.py).
    """
    def same(name: str) -> bool:
        if a[name] == b[name]:
            return True
        if not name.endswith(".png"):
            return False
        decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) for data in (a[name], b[name])]
        return all(d is not None for d in decoded) and np.array_equal(*decoded)

    return [name for name in a if not same(name)]


def statuses(root: Path) -> dict[str, tuple]:
    return {key: (r["status"], r["error"], tuple(r["files"])) for key, r in load(root / MANIFEST).items()}


def test_ray_engine_on_two_nodes_writes_the_local_engines_images(cluster, tiny_batch_model, tmp_path):
    keys = make_inputs(tmp_path / "in", N_IMAGES)
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = [str(tmp_path / "in"), "--model", tiny_batch_model, "--batch-size", "4"]
    assert main(["batch", *args, "--output", str(local), "--device", "cpu", "--no-progress"]) == EXIT_SOME_FAILED
    code, out = finish(cluster.batch(*args, "--output", str(remote)))
    assert code == EXIT_SOME_FAILED, out
    assert f"{N_IMAGES} done" in out and "2 failed" in out, out
    assert sorted(statuses(remote)) == sorted(keys)
    assert statuses(remote) == statuses(local)
    local_files, remote_files = tree(local), tree(remote)
    assert sorted(remote_files) == sorted(local_files)
    assert differing(local_files, remote_files) == []

    # --resume through Ray: only the image whose outputs went missing is redone, to the same images
    (remote / keys[7] / SEED_OVERLAY).unlink()
    code, out = finish(cluster.batch(*args, "--output", str(remote), "--resume"))
    assert code == EXIT_SOME_FAILED and f"1 done, {N_IMAGES - 1} skipped" in out, out
    resumed = tree(remote)
    assert sorted(resumed) == sorted(remote_files) and differing(remote_files, resumed) == []


def test_engine_ray_without_ray_says_how_to_install_it(tiny_batch_model, tmp_path, monkeypatch, capsys):
    Image.fromarray(make_scene(0)[0]).save(tmp_path / "one.png")
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # import ray → ImportError, as when it is not installed
    code = main(["batch", str(tmp_path / "one.png"), "--model", tiny_batch_model, "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress", "--engine", "ray"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and 'pip install "attnvis[ray]"' in err, err


def test_ray_engine_finishes_on_the_head_when_the_worker_node_dies(cluster, tiny_batch_model, tmp_path):
    keys = make_inputs(tmp_path / "in", N_IMAGES, size=(640, 480))  # larger: renders last long enough to be caught
    out_dir = tmp_path / "out"
    job = cluster.batch(str(tmp_path / "in"), "--model", tiny_batch_model, "--batch-size", "2", "--output", str(out_dir))
    manifest, deadline = out_dir / MANIFEST, time.monotonic() + JOB_TIMEOUT_S
    # mid-run: some images are done and the worker node is running a stage (an inference actor or a task)
    while not (manifest.is_file() and manifest.read_bytes().count(b"\n") >= 4 and cluster.running_stages("worker")):
        assert job.poll() is None and time.monotonic() < deadline, finish(job)[1]
        time.sleep(0.05)
    done_at_kill = manifest.read_bytes().count(b"\n")
    cluster.kill("worker")
    code, out = finish(job)
    assert done_at_kill < len(keys), "the job ended before the worker node was killed"
    assert code == EXIT_SOME_FAILED, out
    records = load(manifest)
    assert sorted(records) == sorted(keys)
    assert sum(r["status"] == "ok" for r in records.values()) == N_IMAGES, out
    for key, record in records.items():
        if record["status"] == "ok":
            assert all((out_dir / rel).stat().st_size > 0 for rel in record["files"])
            assert cv2.imread(str(out_dir / record["maps"][0]["overlay"])).shape == (480, 640, 3)
    assert [p.name for p in out_dir.rglob("*.tmp")] == []  # no partial file, even from the killed node's tasks
