"""The codec table: every codec an inner chunk's chain may hold, one entry each.

An entry is one class that says everything about its codec: the name a :class:`._layout.CodecProfile` calls it by,
the Zarr v3 codec names it occupies in a chain, its Zarr v3 JSON for a profile, whether it is a Zarr v3 core codec
and which readers decode it, the profile settings it accepts, and (an instance, configured from the JSON of a
store) how it encodes a chunk and decodes one into a buffer. Everything else is derived from the table:

* the profiles' chains (``CodecProfile.inner_codecs``), their checks, ``standard`` and ``readers``;
* :data:`ALLOWED_CODECS`, the names a reader accepts in a store (any other name is refused unread);
* :func:`parse_chain`, which matches a store's chain against the table, and the resulting :class:`Chain`, which
  ``ShardCodec`` (``_shard.py``) calls to encode and decode inner chunks, and which decodes thumbnails.

Adding a codec is one entry: a subclass of :class:`Codec` (a compression stage: a chunk to bytes) or
:class:`Filter` (an array-to-array step in front of it) added to :data:`CODECS`; a profile then names it in
``PROFILES`` (``_layout.py``). Nothing here imports a codec library at import time: each is imported when a chain
that needs it is configured or first decodes (``open()`` of a zstd store must not pay for numcodecs or pcodec).
"""

from __future__ import annotations

import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from ._crc import crc32c
from ._errors import CodecError, StoreFormatError
from ._vpredict import vpredict_decode, vpredict_encode

if TYPE_CHECKING:
    from ._layout import CodecProfile

__all__ = [
    "ALLOWED_CODECS",
    "CODECS",
    "CORE_READERS",
    "Chain",
    "Codec",
    "Filter",
    "ShardDataError",
    "parse_chain",
]

Pixels = npt.NDArray[np.uint8]
Json = dict[str, Any]

#: Who decodes a chain made only of Zarr v3 core codecs.
CORE_READERS = "any Zarr v3 reader (core codecs only: zarr-python, tensorstore, zarrita.js, napari-ome-zarr, ngff-zarr)"
#: The codecs around every chain, not chosen by a profile: the shard itself, its index chain (bytes + crc32c), the
#: ``crc32c`` closing each chunk, and ``vlen-utf8`` of the string index arrays of layout 1.
STRUCTURAL_CODECS = frozenset({"sharding_indexed", "bytes", "crc32c", "vlen-utf8"})
BYTES_LITTLE: Json = {"name": "bytes", "configuration": {"endian": "little"}}
CRC32C: Json = {"name": "crc32c"}


class ShardDataError(ValueError):
    """An inner chunk of a shard (or a thumbnail chunk) does not decode; the caller names the site and object."""


class _Entry(ABC):
    """What a filter and a compression stage have in common: their description in the table."""

    name: ClassVar[str]
    """The table key: what a profile names (``CodecProfile.compressor`` or one of ``CodecProfile.filters``)."""
    zarr_names: ClassVar[tuple[str, ...]]
    """The Zarr v3 codec names the entry occupies in a chain, in order (``("bytes", "zstd")``)."""
    core: ClassVar[bool]
    """True when every codec of the entry is a Zarr v3 core codec (then every Zarr v3 reader decodes it)."""
    readers: ClassVar[str]
    """Which readers decode it (recorded in the root attributes, shown by ``info``)."""

    @classmethod
    @abstractmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        """The entry's part of the inner chain as Zarr v3 JSON (what zarr-python writes for the same codecs)."""

    @classmethod
    def check(cls, profile: CodecProfile) -> str | None:
        """What is wrong with ``profile``'s settings for this entry, or None."""
        return None


class Filter(_Entry):
    """An array-to-array step in front of the compression stage, undone in place on decoded chunks."""

    def __init__(self, config: Mapping[str, Any], where: str) -> None:
        if config:
            raise StoreFormatError(f"{where}: codec {self.name} takes no configuration, got {dict(config)}")

    @abstractmethod
    def encode(self, chunk: Pixels) -> Pixels:
        """The filtered copy of a (..., rows, columns) uint8 chunk."""

    @abstractmethod
    def decode(self, stack: Pixels) -> None:
        """Undo the filter in place on a (..., rows, columns) stack of decoded chunks (one call for many)."""


class Codec(_Entry):
    """A compression stage: an inner chunk to bytes and back. Configured from the stage's JSON configurations
    (validated, so a store's JSON can never reach a codec library unchecked)."""

    levels: ClassVar[range]
    """The compression levels a profile may ask for."""
    windowed: ClassVar[bool] = False
    """True when :meth:`decode_window_into` decodes only the part of a chunk a window needs (``rxrx2.turbo``'s
    tiles); otherwise a crop decodes whole chunks."""
    tunable: ClassVar[frozenset[str]] = frozenset()
    """The encoder parameters (``CodecProfile.zstd_parameters``) the stage accepts: they tune the encoder only."""

    @classmethod
    def check(cls, profile: CodecProfile) -> str | None:
        if profile.level not in cls.levels:
            return f"{cls.name} level must be {cls.levels.start}..{cls.levels.stop - 1}, got {profile.level}"
        unknown = sorted(k for k, _ in profile.zstd_parameters if k not in cls.tunable)
        if unknown:
            return f"encoder parameters {unknown} are not valid for {cls.name}"
        return None

    def __init__(
        self, configs: Sequence[Mapping[str, Any]], where: str, nbytes: int, parameters: tuple[tuple[str, int], ...] = ()
    ) -> None:
        self.nbytes = nbytes
        """The decoded size of a chunk, in bytes (every chunk decodes to exactly this)."""
        self.tuning = parameters
        """Encoder parameters (not part of the JSON: a decoder needs none of them)."""
        self._configure(configs, where)

    @abstractmethod
    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        """Check the stage's JSON configurations (one per name of :attr:`zarr_names`) and keep what it needs;
        StoreFormatError naming ``where`` for anything this package would not have written."""

    @abstractmethod
    def encode(self, chunk: Pixels) -> bytes:
        """A C-contiguous uint8 chunk to its encoded bytes."""

    @abstractmethod
    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        """Decode ``data`` into the flat uint8 buffer ``out`` (exactly :attr:`nbytes`). Raise ShardDataError naming
        ``what`` when it does not decode. Each library is called the way that releases the GIL, so that threads
        decoding one site's chunks run in parallel."""

    def decode_window_into(self, data: bytes | memoryview, window: tuple[slice, slice], out: Pixels, what: str) -> None:
        """Decode rows and columns ``window`` of a chunk into ``out`` (the window's shape), for :attr:`windowed`
        codecs only."""
        raise NotImplementedError(f"{self.name} decodes whole chunks")


# --- the entries ---------------------------------------------------------------------------------------------------


def _check_bytes(config: Mapping[str, Any], where: str) -> None:
    if config.get("endian", "little") != "little":
        raise StoreFormatError(f"{where}: unsupported bytes configuration {dict(config)}")


_ZSTD_LOCAL = threading.local()


def zstd_compress(data: Any, level: int, parameters: tuple[tuple[str, int], ...] = ()) -> bytes:
    """One standard zstd frame (content size declared, no zstd checksum) at ``level``, or with explicit encoder
    ``parameters`` (python-zstandard's ``ZstdCompressionParameters``). One compressor per thread and setting:
    python-zstandard's compressors are not thread-safe."""
    import zstandard

    cache: dict[tuple[Any, ...], Any] = _ZSTD_LOCAL.__dict__.setdefault("compressors", {})
    key = (level, parameters)
    compressor = cache.get(key)
    if compressor is None:
        if parameters:
            params = zstandard.ZstdCompressionParameters.from_level(level, **dict(parameters))
            compressor = zstandard.ZstdCompressor(compression_params=params, write_content_size=True)
        else:
            compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        cache[key] = compressor
    return bytes(compressor.compress(data))


def _any(buffer: object) -> Any:
    """imagecodecs' stubs are narrower than what it accepts: any contiguous buffer (memoryview, numpy array)."""
    return buffer


class Zstd(Codec):
    """``bytes`` + ``zstd`` (core). Decoded by imagecodecs straight into the output: ~6x Pillow on RxRx2 sites."""

    name = "zstd"
    zarr_names = ("bytes", "zstd")
    core = True
    readers = CORE_READERS
    levels = range(-7, 23)
    #: what python-zstandard's ``ZstdCompressionParameters`` accepts; the frames stay standard zstd frames
    tunable = frozenset({"window_log", "chain_log", "hash_log", "search_log", "min_match", "target_length", "strategy"})

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        return [BYTES_LITTLE, {"name": "zstd", "configuration": {"level": profile.level, "checksum": False}}]

    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        _check_bytes(configs[0], where)
        self.level = int(configs[1].get("level", 0))

    def encode(self, chunk: Pixels) -> bytes:
        return zstd_compress(chunk, self.level, self.tuning)

    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        import imagecodecs  # imported on first decode, not at open (about 60 ms)

        try:
            decoded = imagecodecs.zstd_decode(_any(data), out=_any(out))
        except imagecodecs.ZstdError as exc:
            raise ShardDataError(f"zstd {what} does not decode ({exc})") from None
        if len(decoded) != self.nbytes:
            raise ShardDataError(f"zstd {what} decoded to {len(decoded)} bytes, expected {self.nbytes}")


_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_BLOSC_CNAMES = ("lz4", "lz4hc", "zstd", "zlib", "blosclz")


class Blosc(Codec):
    """``bytes`` + ``blosc`` (core). Encoded by numcodecs; decoded by imagecodecs' Blosc 1 decoder, which releases the
    GIL (numcodecs' holds a lock in worker threads: no speed-up from threads)."""

    name = "blosc"
    zarr_names = ("bytes", "blosc")
    core = True
    readers = CORE_READERS
    levels = range(0, 10)

    @classmethod
    def check(cls, profile: CodecProfile) -> str | None:
        if profile.cname not in _BLOSC_CNAMES:
            return f"unknown blosc cname {profile.cname!r}"
        if profile.shuffle not in _BLOSC_SHUFFLE:
            return f"unknown blosc shuffle {profile.shuffle!r}"
        return super().check(profile)

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        config = {"typesize": 1, "cname": profile.cname, "clevel": profile.level, "shuffle": profile.shuffle, "blocksize": 0}
        return [BYTES_LITTLE, {"name": "blosc", "configuration": config}]

    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        _check_bytes(configs[0], where)
        config = configs[1]
        if config.get("cname") not in _BLOSC_CNAMES or config.get("shuffle") not in _BLOSC_SHUFFLE:
            raise StoreFormatError(f"{where}: unsupported blosc configuration {dict(config)}")
        import numcodecs  # only for the chains that need it: about 30 ms, not paid by opening a zstd store

        self._encoder = numcodecs.Blosc(
            cname=config["cname"],
            clevel=int(config.get("clevel", 5)),
            shuffle=_BLOSC_SHUFFLE[config["shuffle"]],
            blocksize=int(config.get("blocksize", 0)),
        )

    def encode(self, chunk: Pixels) -> bytes:
        return bytes(self._encoder.encode(chunk))

    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        import imagecodecs

        # the C decoder trusts the frame header: validate it against the chunk before handing it untrusted bytes
        if len(data) < 16:
            raise ShardDataError(f"blosc {what} is {len(data)} bytes, shorter than its header")
        nbytes, _blocksize, cbytes = struct.unpack_from("<III", data, 4)
        if nbytes != self.nbytes or cbytes != len(data):
            raise ShardDataError(
                f"blosc {what} header says {nbytes} bytes ({cbytes} compressed); expected {self.nbytes} ({len(data)})"
            )
        try:
            imagecodecs.blosc_decode(_any(data), numthreads=1, out=_any(out))
        except (imagecodecs.BloscError, RuntimeError, ValueError) as exc:
            raise ShardDataError(f"blosc {what} does not decode ({exc})") from None


class PCodec(Codec):
    """numcodecs' PCodec behind ``numcodecs.astype`` to uint16 (pcodec refuses 8-bit input). Not a core codec."""

    name = "pcodec"
    zarr_names = ("numcodecs.astype", "numcodecs.pcodec")
    core = False
    readers = "zarr-python with numcodecs and pcodec installed, or rxrx2-zarr"
    levels = range(0, 13)

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        return [
            {"name": "numcodecs.astype", "configuration": {"encode_dtype": "uint16", "decode_dtype": "uint8"}},
            {"name": "numcodecs.pcodec", "configuration": {"level": profile.level}},
        ]

    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        if configs[0].get("encode_dtype") != "uint16" or configs[0].get("decode_dtype") != "uint8":
            raise StoreFormatError(f"{where}: unsupported astype configuration {dict(configs[0])}")
        self.level = int(configs[1].get("level", 8))

    def encode(self, chunk: Pixels) -> bytes:
        import numcodecs

        return bytes(numcodecs.PCodec(level=self.level).encode(chunk.astype(np.uint16)))

    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        # the allocating simple_decompress releases the GIL (~14 ms/site, 8.6 on 2 threads) where
        # simple_decompress_into keeps it (~20 ms, no speed-up). Values above 255 can only come from a corrupt
        # chunk, which the chunk's crc32c or, on full-site reads, the pixels' checksum detects
        from pcodec import standalone

        try:
            values = np.asarray(standalone.simple_decompress(bytes(data)))
        except (RuntimeError, ValueError) as exc:
            raise ShardDataError(f"pcodec {what} does not decode ({exc})") from None
        if values.dtype != np.uint16 or values.size != self.nbytes:
            raise ShardDataError(f"pcodec {what} decoded to {values.dtype} x {values.size}, expected uint16 x {self.nbytes}")
        np.copyto(out, values.reshape(-1), casting="unsafe")


class VerticalPredictor(Filter):
    """``rxrx2.vpredict`` (this package's codec, ``_codec.py``): vertical predictor + zigzag. Not a core codec."""

    name = "rxrx2.vpredict"
    zarr_names = ("rxrx2.vpredict",)
    core = False
    readers = "zarr-python with rxrx2-zarr installed (codec rxrx2.vpredict), or rxrx2-zarr"

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        return [{"name": cls.name}]

    def encode(self, chunk: Pixels) -> Pixels:
        return vpredict_encode(chunk)

    def decode(self, stack: Pixels) -> None:
        vpredict_decode(stack)


class Turbo(Codec):
    """``rxrx2.turbo`` (this package's codec: ``_turbo.py``, specified in ``docs/turbo.md``): bit planes of
    row-above prediction residuals, tANS-coded in tiles, decoded by compiled kernels (numba) that release the GIL;
    a crop decodes only the tiles it touches. Not a core codec. No levels (its settings are the tile, predictor
    and table size of its configuration)."""

    name = "turbo"
    zarr_names = ("rxrx2.turbo",)
    core = False
    readers = "zarr-python with rxrx2-zarr installed (codec rxrx2.turbo), or rxrx2-zarr"
    levels = range(0, 1)
    windowed = True

    @classmethod
    def to_json(cls, profile: CodecProfile) -> list[Json]:
        from ._turbo import TurboConfig, config_to_json

        return [{"name": "rxrx2.turbo", "configuration": config_to_json(TurboConfig())}]

    def _configure(self, configs: Sequence[Mapping[str, Any]], where: str) -> None:
        from ._turbo import config_from_json  # no numba: that is imported on the first encode or decode

        try:
            self.config = config_from_json(dict(configs[0]) if configs[0] else None)
        except ValueError as exc:
            raise StoreFormatError(f"{where}: {exc}") from None

    def encode(self, chunk: Pixels) -> bytes:
        from . import _turbo

        return _turbo.encode(chunk, self.config)

    def _header(self, data: bytes | memoryview, what: str) -> None:
        from ._turbo import ChunkHeader

        try:
            header = ChunkHeader.parse(data)
        except CodecError as exc:
            raise ShardDataError(f"{what}: {exc}") from None
        if header.images * header.height * header.width != self.nbytes:
            raise ShardDataError(f"{what}: rxrx2.turbo chunk of {header.shape} pixels, expected {self.nbytes}")

    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        from . import _turbo

        try:  # ``out`` holds exactly nbytes: a chunk of another size is refused before anything is written
            _turbo.decode(data, out=out)
        except ValueError as exc:  # CodecError is one
            raise ShardDataError(f"{what}: {exc}") from None

    def decode_window_into(self, data: bytes | memoryview, window: tuple[slice, slice], out: Pixels, what: str) -> None:
        from . import _turbo

        self._header(data, what)
        region = (window[0].start, window[0].stop, window[1].start, window[1].stop)
        try:
            _turbo.decode_region(data, region, out=out[np.newaxis])
        except (CodecError, ValueError) as exc:
            raise ShardDataError(f"{what}: {exc}") from None


#: The table. Profiles name its keys; stores may hold only the Zarr names of its entries (and the structural ones).
CODECS: dict[str, type[Codec] | type[Filter]] = {c.name: c for c in (Zstd, Blosc, PCodec, VerticalPredictor, Turbo)}


class _AllowedCodecs(Set[str]):
    """The Zarr codec names a store of this package may hold, read from :data:`CODECS` when asked (so that a codec
    added to the table is allowed with no other edit)."""

    def _names(self) -> frozenset[str]:
        return STRUCTURAL_CODECS.union(*(entry.zarr_names for entry in CODECS.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names()))

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"ALLOWED_CODECS({sorted(self._names())})"


#: Every codec name a store written by this package may contain (the reader refuses any other, unread).
ALLOWED_CODECS: Set[str] = _AllowedCodecs()


def profile_entries(profile: CodecProfile) -> tuple[type[Filter] | type[Codec], ...]:
    """The table entries of a profile's chain, filters first; ValueError naming the profile if one is unknown."""
    entries: list[type[Filter] | type[Codec]] = []
    for name in profile.filters:
        entry = CODECS.get(name)
        if entry is None or not issubclass(entry, Filter):
            raise ValueError(f"profile {profile.name}: unknown filter {name!r}; filters are {_names(filters=True)}")
        entries.append(entry)
    codec = CODECS.get(profile.compressor)
    if codec is None or not issubclass(codec, Codec):
        raise ValueError(f"profile {profile.name}: unknown compressor {profile.compressor!r}; choose one of {_names(filters=False)}")
    return (*entries, codec)


def _names(*, filters: bool) -> list[str]:
    return sorted(name for name, entry in CODECS.items() if issubclass(entry, Filter) == filters)


# --- a store's chain, parsed -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A validated inner-chunk chain: filters, one compression stage, and whether a ``crc32c`` closes it (layout 2
    always; layout 1 never did). Encodes and decodes chunks of ``chunk_shape``."""

    filters: tuple[Filter, ...]
    codec: Codec
    checked: bool
    chunk_shape: tuple[int, ...]

    def encode(self, chunk: Pixels) -> bytes:
        data = np.ascontiguousarray(chunk, dtype=np.uint8)
        for step in self.filters:
            data = step.encode(data)
        encoded = self.codec.encode(data)
        return with_checksum(encoded) if self.checked else encoded

    def decompress_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        """The checksum and compression stages (not the filters) into the flat uint8 buffer ``out``."""
        if self.checked:
            data = strip_checksum(data, what)
        self.codec.decode_into(data, out, what)

    def unfilter(self, stack: Pixels) -> None:
        """Undo the filters in place on decoded chunks (one chunk, or a stack of them: one call for all)."""
        for step in reversed(self.filters):
            step.decode(stack)

    def decode_into(self, data: bytes | memoryview, out: Pixels, what: str) -> None:
        """Decode one chunk into the flat uint8 buffer ``out``."""
        self.decompress_into(data, out, what)
        if self.filters:
            self.unfilter(out.reshape(self.chunk_shape))

    @property
    def windowed(self) -> bool:
        """True when a part of a chunk decodes for less than the whole (a windowed codec and no filter)."""
        return self.codec.windowed and not self.filters

    def decode_window_into(self, data: bytes | memoryview, window: tuple[slice, slice], out: Pixels, what: str) -> None:
        """Decode rows and columns ``window`` of one chunk into ``out`` (the window's shape; :attr:`windowed`)."""
        if self.checked:
            data = strip_checksum(data, what)
        self.codec.decode_window_into(data, window, out, what)


def parse_chain(
    codecs: Sequence[Mapping[str, Any]],
    where: str,
    chunk_shape: Sequence[int],
    parameters: tuple[tuple[str, int], ...] = (),
) -> Chain:
    """Match an inner chain against the table: any number of filters, one compression stage, then ``crc32c`` or
    nothing. Every name is checked against :data:`ALLOWED_CODECS` before anything else is looked at; StoreFormatError
    names ``where`` and what is wrong. ``parameters`` tune the encoder (they are not part of the JSON)."""
    for codec in codecs:
        if codec.get("name") not in ALLOWED_CODECS:
            raise StoreFormatError(f"{where}: codec {codec.get('name')!r} is not one this library writes; refusing to read it")
    names = [str(c.get("name")) for c in codecs]
    configs = [dict(c.get("configuration") or {}) for c in codecs]
    checked = bool(names) and names[-1] == CRC32C["name"]
    if checked:
        names, configs = names[:-1], configs[:-1]
    filters: list[Filter] = []
    while names and isinstance(entry := CODECS.get(names[0]), type) and issubclass(entry, Filter):
        filters.append(entry(configs[0], where))
        names, configs = names[1:], configs[1:]
    shape = tuple(int(v) for v in chunk_shape)
    for entry in CODECS.values():
        if issubclass(entry, Codec) and tuple(names) == entry.zarr_names:
            stage = entry(configs, where, int(np.prod(shape)), parameters)
            return Chain(tuple(filters), stage, checked, shape)
    raise StoreFormatError(f"{where}: unsupported inner codec chain {[f.name for f in filters] + names}")


def with_checksum(data: bytes) -> bytes:
    """``data`` closed by the Zarr v3 ``crc32c`` codec: its CRC32C, 4 bytes little-endian."""
    return data + crc32c(data).to_bytes(4, "little")


def strip_checksum(data: bytes | memoryview, what: str) -> memoryview:
    """Check and remove the trailing CRC32C of the ``crc32c`` codec; ``what`` names the chunk in the error."""
    view = memoryview(data)
    if len(view) < 4 or crc32c(view[:-4]) != int.from_bytes(view[-4:], "little"):
        raise ShardDataError(f"{what} fails its crc32c checksum (corrupt data)")
    return view[:-4]
