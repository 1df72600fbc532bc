"""The six RxRx2 channels: labels, Recursion's rendering colours and intensity windows (rxrx1-utils)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHANNEL_SPECS", "ChannelSpec"]


@dataclass(frozen=True)
class ChannelSpec:
    """One channel: number (1-based), label, RGB colour and the display window ``(lo, hi)`` on 0..255."""

    number: int
    label: str
    rgb: tuple[int, int, int]
    window: tuple[int, int]

    def __post_init__(self) -> None:
        if not 0 <= self.window[0] < self.window[1] <= 255:
            raise ValueError(f"channel {self.label}: invalid window {self.window}")
        if any(not 0 <= v <= 255 for v in self.rgb):
            raise ValueError(f"channel {self.label}: invalid colour {self.rgb}")

    @property
    def hex_color(self) -> str:
        return "".join(f"{v:02X}" for v in self.rgb)


#: Recursion's channel map (rxrx1-utils ``rxrx/io.py``). The stains of the six-channel sets are not confirmed by
#: Recursion, so the labels are the file suffixes w1..w6, not stain names.
CHANNEL_SPECS: tuple[ChannelSpec, ...] = (
    ChannelSpec(1, "w1", (19, 0, 249), (0, 51)),
    ChannelSpec(2, "w2", (42, 255, 31), (0, 107)),
    ChannelSpec(3, "w3", (255, 0, 25), (0, 64)),
    ChannelSpec(4, "w4", (45, 255, 252), (0, 191)),
    ChannelSpec(5, "w5", (250, 0, 253), (0, 89)),
    ChannelSpec(6, "w6", (254, 255, 40), (0, 191)),
)
