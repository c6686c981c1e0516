"""Which images a batch reads, and where each one's outputs go.

``INPUT`` arguments are folders (searched recursively), globs, text files
with one path per line, or image files. Each image becomes an :class:`Item`
whose ``key`` is its path relative to the common root of all inputs, so the
output tree mirrors the input tree and equal file names in different folders
never collide (``out/a/cat.jpg/`` and ``out/b/cat.jpg/``).

Files are told apart by their real path (symlinks resolved): a file reached
twice, through a symlink or two arguments, is read once, and the output
folder is left out however it is reached. Folders are walked without
following symlinked folders; a glob's ``**`` follows them, as ``glob`` does,
but enters each real folder once, so a link that leads back up
(``dir/loop -> .``) adds nothing.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from attnvis.errors import InputError

# Suffixes picked up when walking a folder or expanding a glob. Explicit files and
# list entries are taken whatever their suffix: a bad one is recorded, not skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".jp2"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


@dataclass(frozen=True)
class Item:
    """One input image.

    Attributes:
        path: the file to read, as found (absolute).
        key: POSIX path relative to the inputs' common root, e.g. ``"a/b/cat.jpg"``;
            the image's outputs go to ``OUTPUT/<key>/``.
    """

    path: str
    key: str


def _is_image_name(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _walk(folder: Path, exclude: str) -> list[str]:
    """Image files under ``folder``, recursively; hidden entries, symlinked folders and ``exclude`` (a real path) are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != exclude]
        found.extend(os.path.join(root, f) for f in files if not f.startswith(".") and _is_image_name(f))
    return found


def _glob(pattern: str, exclude: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``'s image files, entering each real folder once.

    ``glob`` follows symlinked folders under ``**`` without end: with ``dir/loop -> .``
    it lists every file again at each of ~40 levels (2 such links: 2^40). Here ``**``
    is matched against a walk that follows a symlinked folder only into a real
    folder not walked yet, and never into ``exclude``.
    """
    if "**" not in Path(pattern).parts:
        return [f for f in glob.glob(pattern) if os.path.isfile(f) and _is_image_name(f)]
    parts = Path(pattern).parts
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root, wanted = Path(*parts[:first]) if first else Path("."), parts[first:]
    hidden = any(part.startswith(".") for part in wanted)
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or real == exclude:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted((d for d in dirs if hidden or not d.startswith(".")),  # real folders before links to them
                         key=lambda d: (os.path.islink(os.path.join(folder, d)), d))
        rel = Path(os.path.relpath(folder, root)).parts if folder != str(root) else ()
        found.extend(os.path.join(folder, f) for f in files
                     if _is_image_name(f) and _match((*rel, f), wanted))
    return found


def _match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts as ``glob.glob(recursive=True)`` would.

    ``**`` matches zero or more folders; no wildcard matches a name starting with ``.`` unless its pattern does.
    """
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(parts[i:], rest) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatch(parts[0], head) and _match(parts[1:], rest)


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: the root its keys are relative to."""
    parts = Path(pattern).parts
    plain = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*plain) if plain else Path(".")


def _read_list(path: Path) -> list[str]:
    """Paths listed one per line (blank lines and ``#`` comments skipped), relative to the list's folder."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(str(path.parent / line) if not os.path.isabs(line) else line)
    return entries


def _expand(spec: str, exclude: str) -> tuple[list[str], list[str]]:
    """One INPUT argument → (files, roots their keys are relative to)."""
    path = Path(spec)
    if path.is_dir():
        return _walk(path, exclude), [str(path)]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        files = _read_list(path)
        return files, [os.path.dirname(f) or "." for f in files]
    if path.is_file() or (not glob.has_magic(spec) and path.suffix):
        return [spec], [str(path.parent)]  # a missing explicit file is recorded as failed
    if glob.has_magic(spec):
        return _glob(spec, exclude), [str(_glob_root(spec))]
    raise InputError(f"input {spec!r} is not a folder, an image, a glob or a list file (.txt with one path per line)")


def _common_root(roots: list[str]) -> str:
    absolute = [os.path.abspath(r) for r in roots]
    return os.path.commonpath(absolute) if absolute else os.getcwd()


def discover(inputs: list[str], exclude: str | os.PathLike | None = None) -> list[Item]:
    """Expand INPUT arguments into items with unique keys, sorted by key.

    Args:
        inputs: folders, globs, list files or image files.
        exclude: a folder whose files are never inputs: the output folder, which
            may lie inside an input folder (``attnvis batch . --output out``).

    Returns:
        One :class:`Item` per distinct file (a file named twice is read once).

    Raises:
        InputError: an argument matches nothing usable, or no image was found at all.
    """
    files, roots = [], []
    skip = os.path.realpath(exclude) if exclude is not None else "\0"
    real = _RealPaths()
    for spec in inputs:
        found, spec_roots = _expand(spec, skip)
        found = [f for f in found if not real(f).startswith(skip + os.sep)]
        if not found:
            raise InputError(f"input {spec!r} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend(found)
        roots.extend(spec_roots)
    root = _common_root(roots)
    items: dict[str, Item] = {}
    for f in files:
        absolute = os.path.abspath(f)
        item = Item(absolute, Path(os.path.relpath(absolute, root)).as_posix())
        first = items.setdefault(real(f), item)  # one file reached twice (a symlink, two arguments): read once
        if item.key < first.key:
            items[real(f)] = item  # whichever the order of the arguments and of the walk
    if not items:
        raise InputError("no input images: give folders, globs, list files or image files")
    return sorted(items.values(), key=lambda item: item.key)


class _RealPaths:
    """``os.path.realpath`` of files, one folder's resolution shared by its files (a million files: one lstat each)."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        if os.path.islink(path):
            return os.path.realpath(path)
        if folder not in self._folders:
            self._folders[folder] = os.path.realpath(folder)
        return os.path.join(self._folders[folder], name)
