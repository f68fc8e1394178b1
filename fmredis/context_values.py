"""Context values to bytes and back (JSON with orjson, zstandard above a size), and the read-only copies hits return.

A stored value is one tag byte then the payload: ``0`` for JSON as it is, ``1`` for zstandard-compressed JSON. The
tag is read, not configured: a cache built with ``compression=None`` still reads what another process compressed
(it then needs the ``zstandard`` package too).

Hits return the one decoded copy the local tier holds, so that a hit costs a dictionary lookup rather than a 50 KB
parse. That copy is frozen: JSON objects become :class:`FrozenDict` and arrays :class:`FrozenList`, subclasses of
``dict`` and ``list`` that compare, serialize (orjson, ``json``) and read like them and refuse every change. Freezing
costs one walk of the value per miss; ``thaw()`` (or ``copy.deepcopy``) gives a plain, mutable copy.
"""

from __future__ import annotations

import threading
from typing import Any, NoReturn

import orjson

from fmredis.errors import ConfigurationError, SerializationError, ValueTooLarge
from fmredis.serialization import CorruptSession, encode_json

__all__ = ["Codec", "FrozenDict", "FrozenList", "freeze", "thaw"]

_PLAIN, _ZSTD = b"\x00", b"\x01"
_ZSTD_LEVEL = 3  # zstandard's default: 2.4x on a 50 KB context at ~4 us/KB (level 1: 2.3x; docs/context.md)
_INSTALL = "pip install 'fmredis[zstd]'"


def _read_only(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        f"a cached {'dict' if isinstance(self, dict) else 'list'} is read-only (other threads share it); "
        "fmredis.thaw(value) gives a mutable copy"
    )


class FrozenDict(dict[str, Any]):
    """A JSON object from the cache: a ``dict`` that refuses changes (``thaw()`` or ``dict(value)`` copy it)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # copy.deepcopy and pickle give plain, mutable dicts

    def __copy__(self) -> dict[str, Any]:
        return dict(self)


class FrozenList(list[Any]):
    """A JSON array from the cache: a ``list`` that refuses changes (``thaw()`` or ``list(value)`` copy it)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = reverse = sort = clear = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))

    def __copy__(self) -> list[Any]:
        return list(self)


def freeze(value: Any) -> Any:
    """``value`` as orjson decoded it (dicts, lists and scalars; not shared yet, so it is changed in place) with every
    dict and list replaced by a frozen copy. In place, then one C-level copy per container: 40% less time than
    building new containers item by item."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                value[key] = freeze(item)  # replacing a key's value does not disturb the iteration
        return FrozenDict(value)
    if kind is list:
        for index, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                value[index] = freeze(item)
        return FrozenList(value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a cached value (any dict or list in it, frozen or not, is copied)."""
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


class Codec:
    """Encodes values for Redis (refusing what is not JSON or is over ``max_bytes``) and decodes what it finds.

    Thread-safe: zstandard's (de)compressors are not, so each thread has its own.
    """

    def __init__(self, *, compression: str | None, compress_above: int, max_bytes: int) -> None:
        if compression not in ("zstd", None):
            raise ConfigurationError(f"compression must be 'zstd' or None (got {compression!r})", key="compression")
        if compression == "zstd":
            _zstandard("compression='zstd'")
        self.compress = compression == "zstd"
        self.compress_above = compress_above
        self.max_bytes = max_bytes
        self._local = threading.local()

    def encode(self, value: Any, what: str) -> tuple[bytes, bytes]:
        """The bytes to store for ``value`` and its JSON, or raise ``SerializationError`` / ``ValueTooLarge`` before
        anything is sent."""
        if value is None:
            raise SerializationError(f"{what} must not be None: get() returns None for a missing key")
        payload = encode_json(value, what)
        size = len(payload)
        if size > self.max_bytes:
            raise ValueTooLarge(f"{what} is {size} bytes of JSON; the limit (max_value_bytes) is {self.max_bytes}")
        if self.compress and size > self.compress_above:
            return _ZSTD + self._compressor().compress(payload), payload
        return _PLAIN + payload, payload

    def decode(self, stored: bytes) -> tuple[Any, int]:
        """The frozen value stored as ``stored`` and its JSON size; ``CorruptSession`` if it is not a value of ours."""
        tag = stored[:1]
        if tag == _ZSTD:
            frame = stored[1:]
            module = _zstandard("reading a value another process compressed")
            try:
                # The frame's declared size first: zstandard ignores max_output_size when a frame declares one, and
                # a small frame may declare gigabytes.
                if module.frame_content_size(frame) > self.max_bytes:
                    raise CorruptSession("a compressed value over max_value_bytes")
                payload = self._decompressor().decompress(frame, max_output_size=self.max_bytes)
            except CorruptSession:
                raise
            except Exception as exc:  # zstandard.ZstdError, or a frame over max_bytes
                raise CorruptSession(f"not a zstandard frame within max_value_bytes ({type(exc).__name__})") from None
        elif tag == _PLAIN:
            payload = stored[1:]
        else:
            raise CorruptSession("not a value written by ContextCache (unknown tag byte)")
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise CorruptSession(f"invalid JSON ({exc.msg})") from None
        return freeze(value), len(payload)

    def _compressor(self) -> Any:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = _zstandard("compression='zstd'").ZstdCompressor(level=_ZSTD_LEVEL)
        return compressor

    def _decompressor(self) -> Any:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            module = _zstandard("reading a value another process compressed")
            decompressor = self._local.decompressor = module.ZstdDecompressor()
        return decompressor


def _zstandard(purpose: str) -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigurationError(
            f"{purpose} needs the zstandard package ({_INSTALL}); or build the cache with compression=None",
            key="compression",
        ) from None
    return zstandard
