"""Reading one RxRx2 PNG safely: the header is checked before any pixel buffer is allocated.

A PNG's IHDR says how large the decoded image is, and a decoder allocates that much before it looks at the pixel
data, so a hostile or corrupt header (``100000 x 100000``) would cost gigabytes. Every decode therefore parses the
header itself first and refuses anything that is not an 8-bit grayscale image of the dataset's size (or, when the
size is not known yet, larger than :data:`MAX_EDGE`). ``imagecodecs.png_decode`` is only called after that.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np
import numpy.typing as npt

from ._errors import ImageError
from ._layout import MAX_SITE_EDGE
from ._text import count

__all__ = ["HEADER_BYTES", "MAX_EDGE", "PngHeader", "check_header", "decode_png", "max_file_bytes", "read_png_header"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes needed to read and checksum the IHDR chunk: signature (8) + length/type (8) + IHDR data (13) + CRC (4).
HEADER_BYTES = 33
#: Every PNG ends with this zero-length IEND chunk (length, type, CRC); without it the file was cut short.
IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Largest image edge accepted from a header whose expected size is not known yet (RxRx2: 1024).
MAX_EDGE = MAX_SITE_EDGE
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def description(self) -> str:
        return f"{self.width}x{self.height} {self.bit_depth}-bit {_COLOR_TYPES.get(self.color_type, '?')}"


def read_png_header(data: bytes, name: str) -> PngHeader:
    """Parse and checksum the IHDR of ``data`` (at least :data:`HEADER_BYTES` long); ``name`` is used in errors."""
    if not PNG_SIGNATURE.startswith(data[:8]):  # a file shorter than the signature is "truncated" if it fits
        raise ImageError(f"{name}: not a PNG file (bad signature {data[:8]!r})")
    if len(data) < HEADER_BYTES:
        raise ImageError(f"{name}: truncated PNG ({len(data)} bytes, not even a complete header)")
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise ImageError(f"{name}: corrupt PNG (first chunk is {chunk_type!r}, expected IHDR)")
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        raise ImageError(f"{name}: corrupt PNG (IHDR checksum mismatch)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    return PngHeader(width, height, bit_depth, color_type)


def check_header(header: PngHeader, name: str, expected: tuple[int, int] | None) -> None:
    """RxRx2 images are 8-bit grayscale of one size per dataset; anything else is refused before decoding.

    ``expected`` is (height, width); when None, only the absolute bound :data:`MAX_EDGE` applies.
    """
    if header.bit_depth != 8 or header.color_type != 0:
        raise ImageError(f"{name}: expected an 8-bit grayscale PNG, got {header.description}")
    if expected is not None:
        if (header.height, header.width) != expected:
            raise ImageError(
                f"{name}: image is {header.width}x{header.height}, expected {expected[1]}x{expected[0]} like the "
                "rest of the dataset"
            )
    elif not (1 <= header.width <= MAX_EDGE and 1 <= header.height <= MAX_EDGE):
        raise ImageError(
            f"{name}: header claims a {header.width}x{header.height} image; refusing anything outside "
            f"1..{MAX_EDGE} pixels per edge (corrupt or hostile header)"
        )


def max_file_bytes(size: tuple[int, int]) -> int:
    """A generous upper bound on the file size of a valid 8-bit grayscale PNG of ``size`` (height, width).

    Raw scanlines are ``height * (width + 1)`` bytes and deflate expands incompressible data by well under 1%, so
    twice that plus 1 MiB for ancillary chunks is never reached by a real image: a larger file is refused without
    being read into memory.
    """
    return 2 * size[0] * (size[1] + 1) + (1 << 20)


def iend_end(data: bytes) -> int | None:
    """Offset just past the IEND chunk, found by walking the chunk lengths from the signature (a few dozen steps
    for an RxRx2 PNG); None when the chunks run past the end of ``data`` before an IEND (a truncated file)."""
    offset = len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + int(length)
        if end > len(data):
            return None
        if kind == b"IEND":
            return end
        offset = end
    return None


def decode_png(
    data: bytes, name: str, expected: tuple[int, int] | None, notes: list[str] | None = None
) -> npt.NDArray[np.uint8]:
    """Check the header against ``expected`` (height, width), then decode to a (height, width) uint8 array.

    Bytes after the IEND chunk (a file overwritten by a shorter one, an appended trailer) do not touch the pixels:
    the image is decoded from the bytes up to IEND and, when ``notes`` is given, a note naming the file and the
    number of trailing bytes is appended to it (the converter reports it as a warning).
    """
    header = read_png_header(data, name)
    check_header(header, name, expected)
    if not data.endswith(IEND_CHUNK):
        end = iend_end(data)
        if end is None:
            # libpng stops reading once it has the pixels, so a file cut after its image data would otherwise pass
            raise ImageError(f"{name}: truncated PNG (it does not end with an IEND chunk; {len(data)} bytes)")
        if notes is not None:
            notes.append(f"{name}: {count(len(data) - end, 'trailing byte')} after the IEND chunk ignored (pixels intact)")
        data = data[:end]
    try:
        pixels = imagecodecs.png_decode(data)
    except (imagecodecs.PngError, RuntimeError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated PNG ({exc})") from None
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape != (header.height, header.width):
        shape = getattr(pixels, "shape", None)
        raise ImageError(f"{name}: decoded to {getattr(pixels, 'dtype', '?')} {shape}, expected uint8 {(header.height, header.width)}")
    return pixels
