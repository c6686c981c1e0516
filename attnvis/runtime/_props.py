"""An ONNX file's ``metadata_props`` without parsing its graph: the attnvis metadata in milliseconds.

``onnx.load`` parses every initializer (1.5 s for a 88 MB ViT-S here) and an
ORT session costs seconds more; a batch wants the model's layers before it
opens the session, to open it once at the right number of threads. The
metadata is field 14 of the ``ModelProto`` message, a list of
``StringStringEntryProto`` (key: field 1, value: field 2); every other
top-level field is skipped by its length, unread.
"""

from __future__ import annotations

import mmap
from pathlib import Path

_METADATA_PROPS = 14  # ModelProto.metadata_props


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field), in order."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield field, wire, value


def metadata_props(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model in ``path``, as ``onnx.load(path).metadata_props`` holds them.

    Raises:
        ValueError: the file is not a well-formed ONNX ``ModelProto``.
        OSError: it cannot be read.
    """
    props = {}
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return props
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                for field, wire, span in _fields(buf, 0, len(buf)):
                    if field != _METADATA_PROPS or wire != 2:
                        continue
                    entry = {number: bytes(buf[value[0]:value[1]]).decode("utf-8")
                             for number, kind, value in _fields(buf, *span) if kind == 2 and number in (1, 2)}
                    props[entry.get(1, "")] = entry.get(2, "")
            except (IndexError, UnicodeDecodeError):  # a varint or a string past the end, or not text
                raise ValueError("not a whole ONNX model (cut short or not protobuf)") from None
    return props
