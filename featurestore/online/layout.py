"""Online keys: namespaced, versioned, deterministic, cluster-safe.

Key of one entity's row of one view::

    {project}:{view}:{version}:{entity}

* `version` is a fingerprint of what the stored bytes depend on (join keys,
  feature names/types/dims, or the tiling and aggregations of a windowed view,
  plus the codec version): changing a description or a TTL keeps the data,
  changing a type or adding a feature moves the view to fresh keys, so a reader
  never decodes bytes written under another schema.
* `entity` is the join-key values joined by ``|``; integers in decimal, booleans
  ``true``/``false``, strings with ``%`` and ``|`` percent-escaped, so a
  composite key is injective and the Python and Arrow encoders agree byte for
  byte (the Arrow one, used by writes, is vectorized).
* Keys carry no hash tag, so in a Redis Cluster they spread over all slots; the
  store groups multi-key commands by slot (MGET via `mget_nonatomic`, the write
  script per slot).

Windowed views keep several values per entity, which one script updates atomically, so
they share a Redis Cluster hash slot through a hash tag holding the view and the entity::

    {project}:{<view>:<version>:<entity>}:h<hop seconds>   numeric ring of one hop
    {project}:{<view>:<version>:<entity>}:l<i>             last-n list of the i-th last-n column
    {project}:{<view>:<version>:<entity>}:s                state hash: applied stream offsets,
                                                           ``bt`` (batch through), ``sf`` (stream from)

(`{` and `}` in an entity are percent-escaped there, so the tag is always the whole
``<view>:<version>:<entity>``.)

Watermarks of materialization live next to the data: ``{project}:_wm:{view}:{version}``;
a windowed view's batch/stream boundary in ``{project}:_bt:...`` and ``{project}:_sf:...``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.definitions import FeatureView, WindowedFeatureView
from featurestore.online.codec import CODEC_VERSION

SEP = "|"
_PLAIN_INTS = {int, np.int64, np.int32, np.uint32, np.int16, np.int8, np.uint8, np.uint16}


def view_version(view: FeatureView | WindowedFeatureView) -> str:
    """Fingerprint of the view's storage schema (8 hex digits)."""
    spec: dict[str, Any] = {"codec": CODEC_VERSION, "kind": type(view).__name__, "keys": list(view.join_keys)}
    if isinstance(view, WindowedFeatureView):
        spec["hops_s"] = [[w.total_seconds(), view.hop(w).total_seconds()] for a in view.aggregations for w in a.windows]
        spec["aggs"] = [[a.function.value, a.column, a.n, a.dtype and a.dtype.value,
                         [w.total_seconds() for w in a.windows]] for a in view.aggregations]
    else:
        spec["features"] = [[f.name, f.dtype.value, f.dim] for f in view.features]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def key_prefix(project: str, view: FeatureView | WindowedFeatureView) -> str:
    return f"{project}:{view.name}:{view_version(view)}:"


def watermark_key(project: str, view: FeatureView | WindowedFeatureView) -> str:
    return f"{project}:_wm:{view.name}:{view_version(view)}"


def batch_through_key(project: str, view: WindowedFeatureView) -> str:
    return f"{project}:_bt:{view.name}:{view_version(view)}"


def stream_from_key(project: str, view: WindowedFeatureView) -> str:
    return f"{project}:_sf:{view.name}:{view_version(view)}"


def window_prefix(project: str, view: WindowedFeatureView) -> str:
    """What a windowed view's entity keys start with: ``{project}:{<view>:<version>:`` (the tag opens)."""
    return f"{project}:{{{view.name}:{view_version(view)}:"


def _untag(text: str) -> str:
    return text.replace("{", "%7B").replace("}", "%7D") if ("{" in text or "}" in text) else text


def window_entity_bases(prefix: str, values: Sequence[Any], arity: int = 1) -> list[str]:
    """``prefix + entity + "}"`` per entity (append ``:h3600`` etc. for a key); a fast path for plain ints."""
    if arity == 1 and set(map(type, values)) <= _PLAIN_INTS:
        return [f"{prefix}{v}}}" for v in values]
    return [f"{prefix}{_untag(encode_entity(v, arity))}}}" for v in values]


def arrow_window_entity_bases(prefix: str, columns: Sequence[pa.Array]) -> list[str]:
    """`window_entity_bases` for the rows of the join-key columns (vectorized; equal to it)."""
    parts = [_arrow_component(c) for c in columns]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, SEP)
    joined = pc.replace_substring(pc.replace_substring(joined, "{", "%7B"), "}", "%7D")
    return pc.binary_join_element_wise(pa.scalar(prefix), joined, pa.scalar("}"), "").to_pylist()


def _component(value: Any) -> str:
    t = type(value)
    if t is int:
        return str(value)
    if t is str:
        return value.replace("%", "%25").replace(SEP, "%7C") if ("%" in value or SEP in value) else value
    if t is bool or isinstance(value, np.bool_):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return _component(str(value))
    raise TypeError(f"entity key component {value!r} of type {t.__name__}: use int, str or bool")


def encode_entity(value: Any, arity: int = 1) -> str:
    """One entity key (scalar, or tuple for a composite key) -> its key suffix."""
    if isinstance(value, tuple):
        if len(value) != arity:
            raise ValueError(f"entity key {value!r} has {len(value)} parts, expected {arity}")
        return SEP.join(_component(v) for v in value)
    if arity != 1:
        raise ValueError(f"entity key {value!r} must be a tuple of {arity} values")
    return _component(value)


def entity_keys(prefix: str, values: Sequence[Any], arity: int = 1) -> list[str]:
    """Full keys for many entities; a fast path for plain ints."""
    if arity == 1:
        if set(map(type, values)) <= _PLAIN_INTS:  # C-speed loops for the common case
            return list(map(prefix.__add__, map(str, values)))
        return [prefix + encode_entity(v, 1) for v in values]
    return [prefix + encode_entity(v, arity) for v in values]


def _arrow_component(arr: pa.Array) -> pa.Array:
    if arr.null_count:
        raise ValueError("entity key columns must not be null")
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
        return pc.replace_substring(pc.replace_substring(arr, "%", "%25"), SEP, "%7C")
    if pa.types.is_dictionary(arr.type):
        return _arrow_component(arr.dictionary_decode())
    raise TypeError(f"unsupported entity key column type {arr.type}: use integers, strings or booleans")


def arrow_entity_keys(prefix: str, columns: Sequence[pa.Array]) -> list[str]:
    """Full keys for the rows of the join-key columns (vectorized; equals `entity_keys`)."""
    parts = [_arrow_component(c) for c in columns]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, SEP)
    return pc.binary_join_element_wise(pa.scalar(prefix), joined, "").to_pylist()
