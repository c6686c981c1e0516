"""The one place a device is resolved, for ONNX Runtime and PyTorch alike.

``auto`` means CUDA when usable, else the CPU; ``cuda`` means CUDA or a
:class:`~attnvis.errors.DeviceError`, never a silent CPU run. For ONNX
Runtime, usable is what ``session.get_providers()`` reports after the session
is made: ``get_available_providers()`` lists CUDA whenever the GPU wheel is
installed, GPU or not.
"""

from __future__ import annotations

from pathlib import Path

from attnvis.errors import DeviceError, InputError, ModelError

DEVICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_NO_CUDA = ("ONNX Runtime's CUDA execution provider is not usable here (no GPU, NVIDIA driver or CUDA libraries); "
            "use --device cpu or auto")
_NO_TORCH_CUDA = "PyTorch sees no usable CUDA device; use --device cpu or auto"


def check_device(device: str) -> str:
    """``device`` itself when it is one of :data:`DEVICES`.

    Raises:
        InputError: any other value.
    """
    if device not in DEVICES:
        raise InputError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    return device


def _driver_present() -> bool:
    """Whether the CUDA driver library loads; without it ORT's CUDA provider cannot."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return True  # let ORT decide
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_options(cuda_graph: bool = False) -> dict[str, str]:
    """The CUDA execution provider's options: device 0, and CUDA graphs when asked for.

    With ``enable_cuda_graph`` ORT records the launches of a run once and replays
    them; every input and output must then be bound to fixed device buffers
    (see :mod:`attnvis.runtime._iobind`) and every node must run on CUDA.
    """
    options = {"device_id": "0"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def ort_providers(device: str, cuda_graph: bool = False) -> list:
    """The providers to ask ONNX Runtime for (CUDA as ``(name, options)``).

    Raises:
        InputError: an unknown device, or CUDA graphs without ``cuda``.
        DeviceError: ``cuda`` where the CUDA provider cannot load.
    """
    import onnxruntime as ort

    if cuda_graph and device != "cuda":
        raise InputError(f"CUDA graphs run on --device cuda only, not {device!r}")
    if check_device(device) == "cpu":
        return [CPU]
    usable = CUDA in ort.get_available_providers() and _driver_present()
    if device == "cuda" and not usable:
        raise DeviceError(f"--device cuda: {_NO_CUDA}")
    if not usable:
        return [CPU]
    ort.set_default_logger_severity(4)  # a CUDA provider that fails to load is reported by us, once
    _preload_cuda_libraries(ort)
    return [(CUDA, cuda_options(cuda_graph)), CPU]


def _preload_cuda_libraries(ort) -> None:
    """Load the CUDA and cuDNN libraries ORT's CUDA provider needs from the pip ``nvidia-*`` packages, once.

    ``import torch`` does it for a compatible PyTorch, but the runtime does not
    import torch; without it the provider finds them only on the loader's path.
    ``onnxruntime.preload_dlls`` (onnxruntime-gpu ≥ 1.21) is ORT's own way; its
    notes go nowhere, and where it cannot load them the session says so (``--device cuda``).
    """
    global _PRELOADED
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED = True
    import contextlib
    import io

    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        ort.preload_dlls()


_PRELOADED = False


def ort_session(path: str | Path, device: str = "auto", options=None, cuda_graph: bool = False):
    """An ``onnxruntime.InferenceSession`` on ``device``, checked with ``get_providers()``.

    Raises:
        InputError: the file is missing, or CUDA graphs without ``cuda``.
        ModelError: ONNX Runtime cannot load it.
        DeviceError: ``cuda`` asked for and the session does not run on it.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is not an ONNX file (it is empty, 0 bytes); give a model made by 'attnvis export'")
    providers = ort_providers(device, cuda_graph)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ORT raises its own exception types for corrupt files
        raise ModelError(f"cannot load {path} with ONNX Runtime: {str(err).splitlines()[0]}") from None
    if device == "cuda" and CUDA not in session.get_providers():
        raise DeviceError(f"--device cuda: {_NO_CUDA}")
    return session


def torch_device(device: str):
    """The ``torch.device`` for ``device`` (``auto``: CUDA if PyTorch can use it).

    Raises:
        InputError: an unknown device.
        DeviceError: ``cuda`` where PyTorch sees no usable GPU.
    """
    import torch

    check_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device cuda: {_NO_TORCH_CUDA}")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
