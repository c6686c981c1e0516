"""One registry of model sources: a ``--model`` spec goes to the first entry whose test it passes.

Each loader module registers itself with :func:`register_source`; the order of
``_ORDER`` in :mod:`attnvis.sources` decides which test is asked first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attnvis.errors import InputError
from attnvis.sources.base import ModelSource

Loader = Callable[..., ModelSource]


@dataclass(frozen=True)
class SourceKind:
    """A kind of ``--model`` spec: a name, a test on the spec and the loader that resolves it."""

    name: str
    matches: Callable[[str], bool]
    load: Loader


_KINDS: dict[str, SourceKind] = {}


def register_source(name: str, matches: Callable[[str], bool]) -> Callable[[Loader], Loader]:
    """Decorator: ``loader(spec, *, weights, input_shape, image_size, tokens)`` for specs that ``matches``.

    Raises:
        ValueError: ``name`` is registered already.
    """

    def decorate(load: Loader) -> Loader:
        if name in _KINDS:
            raise ValueError(f"model source {name!r} is registered already")
        _KINDS[name] = SourceKind(name, matches, load)
        return load

    return decorate


def find_source(spec: str, order: tuple[str, ...]) -> SourceKind:
    """The first kind, in ``order``, whose test ``spec`` passes.

    Raises:
        InputError: no kind takes the spec.
    """
    for name in order:
        kind = _KINDS[name]
        if kind.matches(spec):
            return kind
    raise InputError(f"--model {spec!r} is not a file, a directory, 'default', timm:NAME, torchvision:NAME "
                     "or package.module:factory")


def source_names() -> list[str]:
    """The registered kinds, in registration order."""
    return list(_KINDS)
