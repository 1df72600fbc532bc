"""Recursion's RGB rendering rule, montages and ``show``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rxrx2_zarr import Dataset, SiteNotFoundError, render_rgb
from rxrx2_zarr import open as open_store
from rxrx2_zarr._render import montage, render_planes, show

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Recursion's channel map, restated here from rxrx1-utils (rxrx/io.py) rather than imported, so that the test
# checks the package's constants too.
RGB_MAP = {
    1: ((19, 0, 249), (0, 51)),
    2: ((42, 255, 31), (0, 107)),
    3: ((255, 0, 25), (0, 64)),
    4: ((45, 255, 252), (0, 191)),
    5: ((250, 0, 253), (0, 89)),
    6: ((254, 255, 40), (0, 191)),
}


def reference_pixel(values: dict[int, float], vmax: float = 255.0) -> tuple[int, int, int]:
    """rxrx1-utils' ``convert_tensor_to_rgb`` for one pixel, in plain Python: per channel
    ``x = (t / vmax) / ((hi - lo) / 255) + lo / 255``, clipped to 1, times the colour and truncated to int; summed
    over channels and clipped to 255."""
    total = [0, 0, 0]
    for channel, t in values.items():
        rgb, (lo, hi) = RGB_MAP[channel]
        x = (t / vmax) / ((hi - lo) / 255) + lo / 255
        x = 1.0 if x > 1.0 else x
        for i in range(3):
            total[i] += int(x * rgb[i])
    return (min(total[0], 255), min(total[1], 255), min(total[2], 255))


def test_reference_formula_by_hand() -> None:
    # w1 at the top of its window (51) is its full colour; half-way (25) is 25/51 of it, truncated
    assert reference_pixel({1: 51}) == (19, 0, 249)
    assert reference_pixel({1: 25}) == (int(25 / 51 * 19), 0, int(25 / 51 * 249)) == (9, 0, 122)
    # above the window: clipped to 1
    assert reference_pixel({3: 200}) == (255, 0, 25)
    # sums clip at 255 per component
    assert reference_pixel({1: 51, 3: 64}) == (255, 0, 255)


def test_render_rgb_equals_formula_on_known_values() -> None:
    pixels = np.zeros((6, 2, 4), dtype=np.uint8)
    pixels[0] = [[0, 25, 51, 255], [1, 2, 3, 4]]
    pixels[1] = [[0, 50, 107, 10], [200, 0, 0, 7]]
    pixels[2] = [[64, 0, 32, 1], [0, 63, 0, 0]]
    pixels[3] = [[5, 191, 0, 100], [0, 0, 96, 0]]
    pixels[4] = [[0, 0, 89, 44], [9, 0, 0, 90]]
    pixels[5] = [[191, 0, 0, 12], [0, 95, 0, 255]]
    got = render_rgb(pixels)
    assert got.dtype == np.uint8 and got.shape == (2, 4, 3)
    for y in range(2):
        for x in range(4):
            expected = reference_pixel({c: float(pixels[c - 1, y, x]) for c in range(1, 7)})
            assert tuple(int(v) for v in got[y, x]) == expected, (y, x)
    # a subset of channels contributes only those channels
    subset = render_rgb(pixels, channels=(2, 5))
    for y in range(2):
        for x in range(4):
            assert tuple(int(v) for v in subset[y, x]) == reference_pixel({2: pixels[1, y, x], 5: pixels[4, y, x]})


def test_render_rgb_every_value_of_every_channel() -> None:
    values = np.arange(256, dtype=np.uint8)
    for channel in range(1, 7):
        pixels = np.zeros((6, 1, 256), dtype=np.uint8)
        pixels[channel - 1, 0] = values
        got = render_rgb(pixels, channels=(channel,))
        expected = [reference_pixel({channel: float(v)}) for v in values]
        assert [tuple(int(c) for c in p) for p in got[0]] == expected, channel


def test_render_rgb_batches_planes_and_vmax() -> None:
    rng = np.random.default_rng(0)
    sites = rng.integers(0, 256, size=(3, 6, 5, 7), dtype=np.uint8)
    batch = render_rgb(sites)
    assert batch.shape == (3, 5, 7, 3)
    for k in range(3):
        np.testing.assert_array_equal(batch[k], render_rgb(sites[k]))
    # planes given for just the channels rendered, in their order
    np.testing.assert_array_equal(render_rgb(sites[:, [4, 1]], channels=(5, 2)), render_rgb(sites, channels=(5, 2)))
    np.testing.assert_array_equal(render_planes(sites[:, [0]], (1,)), render_rgb(sites, channels=(1,)))
    half = render_rgb(sites[0], vmax=127.5)
    assert tuple(int(v) for v in half[0, 0]) == reference_pixel({c: float(sites[0, c - 1, 0, 0]) for c in range(1, 7)}, 127.5)


def test_render_rgb_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="channel"):
        render_rgb(np.zeros((6, 2, 2), np.uint8), channels=(0,))
    with pytest.raises(ValueError, match="channel"):
        render_rgb(np.zeros((6, 2, 2), np.uint8), channels=())
    with pytest.raises(ValueError, match="planes"):
        render_rgb(np.zeros((4, 2, 2), np.uint8), channels=(1, 2))
    with pytest.raises(ValueError, match="shape"):
        render_rgb(np.zeros((2, 2), np.uint8))


@pytest.fixture(scope="module")
def ds(store: Path) -> Dataset:
    return open_store(str(store))


def test_montage_tiles_and_labels(ds: Dataset) -> None:
    ids = ds.site_ids[:5]
    image = montage(ds, ids, tile=64)
    columns, rows = 3, 2
    assert image.mode == "RGB"
    assert image.width == columns * 64
    label = image.height // rows - 64
    assert label > 0 and image.height == rows * (64 + label)
    # each tile is the site's rendering, shrunk by area averaging (96 -> 64 px)
    for k, site_id in enumerate(ids):
        expected = Image.fromarray(render_rgb(ds.site(site_id))).resize((64, 64), Image.Resampling.BOX)
        tile = image.crop(((k % columns) * 64, (k // columns) * (64 + label), (k % columns) * 64 + 64, (k // columns) * (64 + label) + 64))
        np.testing.assert_array_equal(np.asarray(tile), np.asarray(expected))
        strip = np.asarray(image.crop(((k % columns) * 64, (k // columns) * (64 + label) + 64, (k % columns) * 64 + 64, (k // columns + 1) * (64 + label))))
        assert (strip > 200).any(), f"no label text under {site_id}"
    # the tile after the last site stays empty (black)
    assert not np.asarray(image.crop((2 * 64, 64 + label, 3 * 64, 2 * (64 + label)))).any()
    # tiles are never enlarged
    assert montage(ds, ids[:1], tile=500, label=False).size == (96, 96)


def test_show_writes_a_montage_png(store: Path, tmp_path: Path, ds: Dataset) -> None:
    ids = ds.site_ids[:4]
    out = show(str(store), ids, out=tmp_path / "deep" / "m.png")
    assert out == tmp_path / "deep" / "m.png" and out.is_file()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.width == 2 * 96 and image.height > 2 * 96
        first = np.asarray(image.convert("RGB"))[:96, :96]
    np.testing.assert_array_equal(first, render_rgb(ds.site(ids[0])))


def test_show_by_selection_caps_tiles(store: Path, tmp_path: Path, ds: Dataset) -> None:
    controls = ds.select(treatment="EMPTY")
    assert len(controls) > 3
    out = show(str(store), out=tmp_path / "empty.png", select={"treatment": "EMPTY"}, max_sites=3, tile=32)
    with Image.open(out) as image:
        assert image.width == 2 * 32  # three tiles: 2 columns x 2 rows
        first = np.asarray(image.convert("RGB"))[:32, :32]
    expected = Image.fromarray(render_rgb(controls.site(controls.site_ids[0]))).resize((32, 32), Image.Resampling.BOX)
    np.testing.assert_array_equal(first, np.asarray(expected))


def test_show_errors(store: Path, tmp_path: Path, ds: Dataset) -> None:
    with pytest.raises(ValueError, match="no site"):
        show(str(store), out=tmp_path / "x.png", select={"treatment": "no-such-factor"})
    with pytest.raises(SiteNotFoundError, match="HUVEC-1_9_B02_1"):
        show(str(store), ["HUVEC-1_9_B02_1"], out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_sites"):
        show(str(store), ds.site_ids[:1], out=tmp_path / "x.png", max_sites=0)
    outside = ds.select(treatment="EMPTY").site_ids[0]
    with pytest.raises(SiteNotFoundError, match="selection"):
        show(str(store), [outside], out=tmp_path / "x.png", select={"treatment": "not-EMPTY"})
    assert not (tmp_path / "x.png").exists()


def test_dataset_to_rgb(ds: Dataset) -> None:
    site_id = ds.site_ids[0]
    single = ds.to_rgb(site_id)
    assert single.shape == (96, 96, 3) and single.dtype == np.uint8
    np.testing.assert_array_equal(single, render_rgb(ds.site(site_id)))
    several = ds.to_rgb(ds.site_ids[:2], channels=(1, 4))
    assert several.shape == (2, 96, 96, 3)
    np.testing.assert_array_equal(several[1], render_rgb(ds.site(ds.site_ids[1]), channels=(1, 4)))


def test_cli_show(store: Path, tmp_path: Path, ds: Dataset) -> None:
    from click.testing import CliRunner

    from rxrx2_zarr.cli import main

    out = tmp_path / "cli.png"
    result = CliRunner().invoke(main, ["show", str(store), "-o", str(out), "--treatment", "EMPTY", "--max", "2"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.width == math.ceil(math.sqrt(2)) * min(256, 96)
