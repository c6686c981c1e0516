"""ORT's CUDA provider gets its CUDA libraries loaded (``onnxruntime.preload_dlls``) once, quietly, only for CUDA."""

import sys
import types

from attnvis.runtime import device


def _fake_ort(calls: list):
    ort = types.ModuleType("onnxruntime")
    ort.get_available_providers = lambda: [device.CUDA, device.CPU]
    ort.set_default_logger_severity = lambda level: None
    ort.preload_dlls = lambda: calls.append(1) or print("a note ORT prints")
    return ort


def test_cuda_providers_preload_the_libraries_once_and_quietly(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(calls))
    monkeypatch.setattr(device, "_driver_present", lambda: True)
    monkeypatch.setattr(device, "_PRELOADED", False)
    assert device.ort_providers("cpu") == [device.CPU] and calls == []  # a CPU run loads nothing
    assert device.ort_providers("cuda")[0][0] == device.CUDA
    device.ort_providers("auto")
    assert calls == [1] and capsys.readouterr().out == ""
