"""Constants of the ``rxrx2.turbo`` chunk format (``docs/turbo.md`` is the specification), shared by the compiled
kernels (:mod:`._turbo_kernels`) and the numpy reference (:mod:`._turbo_numpy`). No imports beyond the standard
library: :mod:`._turbo` reads headers with these before deciding which implementation runs.
"""

from __future__ import annotations

import struct

#: First 4 bytes of every chunk, and the format version in byte 4.
MAGIC = b"RXTC"
MAGIC_U32 = int.from_bytes(MAGIC, "little")
VERSION = 1
#: magic (4), version, predictor, table log, planes (1 each), images, height, width (uint32 each), tile height,
#: tile width (uint16 each), table section bytes (uint32); little-endian.
HEADER = struct.Struct("<4sBBBBIIIHHI")
HEADER_BYTES = HEADER.size

#: Predictors: the residual of a pixel is its difference (mod 256) from a prediction made from the row above, so
#: that decoding a row is one vectorised pass over the row above (no left-to-right dependency).
PRED_NONE = 0  # no prediction: the residual code is the pixel value itself
PRED_UP = 1  # the pixel above
PRED_UP3 = 2  # (above-left + 2 * above + above-right + 2) >> 2
PREDICTORS = {"none": PRED_NONE, "up": PRED_UP, "up3": PRED_UP3}

#: Bit planes of the residual codes (uint8: 8). Each plane of a tile is a sequence of symbols: a nonzero byte
#: (8 pixels of the plane, symbols 1..255) or a run of 1..RUN_MAX zero bytes (symbols 256..255 + RUN_MAX).
MAX_PLANES = 8
RUN_MAX = 64
ALPHABET = 256 + RUN_MAX
#: Coding contexts per plane: whether the previous symbol of the same plane stream was a run.
CONTEXTS = 2
MIN_TABLE_LOG = 9
MAX_TABLE_LOG = 12
DEFAULT_TABLE_LOG = 10
#: The encoder stores a plane raw unless coding it saves at least 1/RAW_MARGIN of its bytes: a coded byte costs
#: about 30x a copied one to decode, and planes of noise code to 97-100% of raw (real fluorescence images: their
#: three lowest planes), so this buys speed for a fraction of a percent of size (the encoder's choice only).
RAW_MARGIN = 16
#: Default tile (rows, columns): a 256 x 256 crop of a 1024 x 1024 chunk decodes at most 5 x 2 tiles.
DEFAULT_TILE = (64, 256)
MAX_TILE_EDGE = 4096

#: A decoding-table entry (uint32): the byte the symbol writes (0 for a run; bits 0-7), the bits to read (8-11),
#: the bytes it covers minus one (12-17), FLAG_INVALID (18) and the next state's index within the plane's two
#: tables (19-31): its base, plus the table size when the symbol is a run (the next symbol's context is then 1).
#: Entries of a table the chunk declares unused carry FLAG_INVALID: reaching one means the data is corrupt (the
#: encoder never codes a symbol in an unused context).
ENTRY_BITS_SHIFT = 8
ENTRY_ADVANCE_SHIFT = 12
ENTRY_BASE_SHIFT = 19
FLAG_INVALID = 1 << 18

# Error codes returned by the decoding kernels (0 = success); :mod:`._turbo` turns them into messages.
ERR_HEADER = -1
ERR_SHAPE = -2
ERR_TABLE = -3
ERR_OFFSETS = -4
ERR_TILE = -5
ERR_ENTRY = -6
ERR_OVERRUN = -7
ERR_STREAM_END = -8
ERR_MESSAGES = {
    ERR_HEADER: "malformed chunk header",
    ERR_SHAPE: "chunk shape differs from the expected one",
    ERR_TABLE: "malformed entropy-table section",
    ERR_OFFSETS: "tile offsets are not increasing or point outside the chunk",
    ERR_TILE: "malformed tile header (plane count or stream lengths)",
    ERR_ENTRY: "a symbol was coded in a context the chunk declares unused",
    ERR_OVERRUN: "a bit-plane stream reads past its end",
    ERR_STREAM_END: "a bit-plane stream does not end where its length says (or its final state is not 0)",
}
