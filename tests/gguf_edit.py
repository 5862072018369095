"""Test helpers: copy a GGUF file with metadata keys removed (an 'older community GGUF'), changed,
added or retyped (a crafted file), through gguf-py's reader and writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

V = gguf.GGUFValueType


def copy_with_changes(src: Path, dst: Path, *, drop: set[str] = frozenset(),
                      values: dict[str, tuple] | None = None,
                      arrays: dict[str, Callable[[list], list]] | None = None, tensors: bool = True) -> Path:
    """Copy ``src`` to ``dst`` with its tensors unchanged and its key/values edited.

    ``drop``: keys to leave out. ``values``: ``{key: (value, GGUFValueType[, element type])}``,
    set in place (same position) or appended when the key is new; any type may be given, so a
    u32 key can be written as f32, string or array. ``arrays``: ``{key: edit}``, where ``edit``
    gets a copy of the array's elements (strings as ``bytes``) and returns the new list, written
    with the array's own element type. ``tensors=False`` writes none (``tensor_count`` 0).
    """
    values, arrays = dict(values or {}), dict(arrays or {})
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in drop or name == "general.architecture":
            continue
        main = field.types[0]
        sub = field.types[-1] if main == V.ARRAY else None
        if name in values:
            value, vtype, *rest = values.pop(name)
            writer.add_key_value(name, value, vtype, sub_type=rest[0] if rest else None)
            continue
        if sub == V.STRING:
            content: Any = [bytes(field.parts[i]) for i in field.data]
        else:
            content = field.contents()
        if name in arrays:
            content = arrays.pop(name)(list(content))
        writer.add_key_value(name, content, main, sub_type=sub)
    for name, (value, vtype, *rest) in values.items():
        writer.add_key_value(name, value, vtype, sub_type=rest[0] if rest else None)
    assert not arrays, f"no such array key(s): {sorted(arrays)}"
    for t in reader.tensors if tensors else ():
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def copy_without_keys(src: Path, dst: Path, drop: set[str]) -> Path:
    return copy_with_changes(src, dst, drop=drop)
