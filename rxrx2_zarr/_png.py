"""Reading one RxRx2 PNG safely: the header is checked before any pixel buffer is allocated."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import imagecodecs
import numpy as np
import numpy.typing as npt

from ._errors import ImageError

__all__ = ["PngHeader", "decode_png", "read_png_header"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes needed to read the IHDR chunk: signature (8) + length/type (8) + IHDR data (13).
HEADER_BYTES = 29
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
    """Parse the IHDR of ``data`` (at least :data:`HEADER_BYTES` long); ``name`` is used in errors."""
    if len(data) < HEADER_BYTES:
        raise ImageError(f"{name}: truncated PNG ({len(data)} bytes, not even a complete header)")
    if data[:8] != PNG_SIGNATURE:
        raise ImageError(f"{name}: not a PNG file (bad signature {data[:8]!r})")
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise ImageError(f"{name}: corrupt PNG (first chunk is {chunk_type!r}, expected IHDR)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    return PngHeader(width, height, bit_depth, color_type)


def check_header(header: PngHeader, name: str, expected: tuple[int, int] | None) -> None:
    """RxRx2 images are 8-bit grayscale of one size per dataset; anything else is refused before decoding."""
    if header.bit_depth != 8 or header.color_type != 0:
        raise ImageError(f"{name}: expected an 8-bit grayscale PNG, got {header.description}")
    if expected is not None and (header.height, header.width) != expected:
        raise ImageError(
            f"{name}: image is {header.width}x{header.height}, expected {expected[1]}x{expected[0]} like the rest of "
            "the dataset"
        )


def decode_png(data: bytes, name: str, expected: tuple[int, int] | None) -> npt.NDArray[np.uint8]:
    """Check the header against ``expected`` (height, width), then decode to a (height, width) uint8 array."""
    header = read_png_header(data, name)
    check_header(header, name, expected)
    try:
        pixels = imagecodecs.png_decode(data)
    except (imagecodecs.PngError, RuntimeError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated PNG ({exc})") from None
    if pixels.dtype != np.uint8 or pixels.shape != (header.height, header.width):
        raise ImageError(f"{name}: decoded to {pixels.dtype} {pixels.shape}, expected uint8 {(header.height, header.width)}")
    return pixels  # type: ignore[no-any-return]
