"""Optional dependencies: import one, or fail with one line naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from attnvis.errors import MissingExtraError

#: Which ``pip install "attnvis[EXTRA]"`` brings each optional top-level package.
EXTRAS = {
    "torch": "export", "onnxscript": "export", "torchvision": "timm", "timm": "timm", "transformers": "hf",
    "safetensors": "hf", "matplotlib": "bench", "psutil": "bench", "ray": "ray", "pyarrow": "maps",
    "numba_cuda": "gpu",
}


def require(module: str, what: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names too), or raise :class:`MissingExtraError`.

    Args:
        module: e.g. ``"matplotlib.pyplot"``.
        what: what needs it, for the message (default: the module's name).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise  # the package is there but broken: its own error says more
        extra = EXTRAS.get(top, top)
        raise MissingExtraError(f"{what or top} needs {top}, which is not installed: "
                                f'pip install "attnvis[{extra}]"') from None


def check(*modules: str, what: str | None = None) -> None:
    """:func:`require` each module now, before any work that would need them later."""
    for module in modules:
        require(module, what)
