"""The local engine's worker threads yield to the thread that feeds the model."""

import os
import sys
import threading
from types import SimpleNamespace

import pytest

from attnvis.batch import local
from attnvis.batch.inputs import Item


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux only")
def test_workers_run_nicer_than_the_driver(monkeypatch, tmp_path):
    seen = []

    def decode_item(item, plan, max_pixels):  # every file "bad": no model is needed, the records still flow
        seen.append(_nice())
        return {"key": item.key, "status": "failed"}

    monkeypatch.setattr(local, "decode_item", decode_item)
    engine = local.LocalEngine(None, SimpleNamespace(save="maps"), tmp_path, batch_size=2, workers=2)
    records = []
    engine.run([Item(f"/nowhere/{i}.jpg", f"{i}.jpg") for i in range(6)], records.append)
    driver = _nice()
    assert [r["key"] for r in records] == [f"{i}.jpg" for i in range(6)]
    assert len(seen) == 6 and set(seen) == {min(19, driver + local.WORKER_NICE)}
    assert _nice() == driver  # the driver itself is untouched
