"""The RxRx2 path and id grammar: round trips over the whole grid, and malformed strings refused by name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxrx2_zarr._errors import PathGrammarError
from rxrx2_zarr._paths import (
    CHANNELS,
    GRID_COLUMNS,
    GRID_ROWS,
    ImageKey,
    SiteKey,
    WellAddress,
    image_path,
    parse_image_path,
    parse_site_id,
    parse_well_id,
)

# Experiment names: letters, digits, '.' and '-', starting with a letter or digit, never '..' (nor '_' or '/').
experiments = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,12}", fullmatch=True).filter(
    lambda s: ".." not in s
)
wells = st.builds(WellAddress, st.sampled_from(GRID_ROWS), st.integers(1, len(GRID_COLUMNS)))
numbers = st.integers(1, 10**6)
site_keys = st.builds(SiteKey, experiments, numbers, wells, numbers)
image_keys = st.builds(ImageKey, experiments, numbers, wells, numbers, numbers)


def test_grid_shape() -> None:
    assert len(GRID_ROWS) == 32 and GRID_ROWS[0] == "A" and GRID_ROWS[25] == "Z" and GRID_ROWS[-1] == "AF"
    assert len(GRID_COLUMNS) == 48 and GRID_COLUMNS[0] == "01" and GRID_COLUMNS[-1] == "48"
    assert CHANNELS == (1, 2, 3, 4, 5, 6)


def test_every_well_of_the_grid_round_trips() -> None:
    seen = set()
    for r, row in enumerate(GRID_ROWS):
        for c in range(1, 49):
            well = WellAddress(row, c)
            text = str(well)
            assert text == f"{row}{c:02d}"
            assert WellAddress.parse(text) == well
            assert (well.row_index, well.column_index) == (r, c - 1)
            seen.add(text)
    assert len(seen) == 1536


def test_documented_example() -> None:
    key = parse_image_path("images/HUVEC-1/Plate1/AA02_s2_w3.png")
    assert key == ImageKey("HUVEC-1", 1, WellAddress("AA", 2), 2, 3)
    assert key.site_key.site_id == "HUVEC-1_1_AA02_2"
    assert key.site_key.well_id == "HUVEC-1_1_AA02"
    assert parse_site_id("HUVEC-1_1_AA03_1") == SiteKey("HUVEC-1", 1, WellAddress("AA", 3), 1)
    assert key.site_key.image_paths()[0] == "images/HUVEC-1/Plate1/AA02_s2_w1.png"
    assert len(key.site_key.image_paths()) == 6


@given(image_keys)
def test_image_path_round_trip(key: ImageKey) -> None:
    path = image_path(key)
    assert parse_image_path(path) == key
    assert image_path(parse_image_path(path)) == path


@given(site_keys)
def test_site_id_round_trip(key: SiteKey) -> None:
    assert parse_site_id(key.site_id) == key
    assert key.site_id == f"{key.well_id}_{key.site}"
    assert parse_well_id(key.well_id) == (key.experiment, key.plate, key.well)
    for channel, path in zip(CHANNELS, key.image_paths(), strict=True):
        assert parse_image_path(path) == key.image(channel)
        assert parse_image_path(path).site_key == key


@given(wells)
def test_well_address_round_trip(well: WellAddress) -> None:
    assert WellAddress.parse(str(well)) == well
    assert str(well) == well.row + well.column_name


@pytest.mark.parametrize(
    "path",
    [
        "images/HUVEC-1/Plate1/AG01_s1_w1.png",  # row beyond AF
        "images/HUVEC-1/Plate1/B00_s1_w1.png",  # column 00
        "images/HUVEC-1/Plate1/B49_s1_w1.png",  # column 49
        "images/HUVEC-1/Plate1/b02_s1_w1.png",  # lower-case row
        "images/HUVEC-1/Plate1/B2_s1_w1.png",  # one-digit column
        "images/HUVEC-1/Plate1/B02_s1.png",  # missing _w
        "images/HUVEC-1/Plate1/B02_w1.png",  # missing _s
        "images/HUVEC-1/Plate1/B02_s0_w1.png",  # site 0
        "images/HUVEC-1/Plate1/B02_s1_w0.png",  # channel 0
        "images/HUVEC-1/Plate0/B02_s1_w1.png",  # plate 0
        "images/HUVEC-1/Plate01/B02_s1_w1.png",  # zero-padded plate
        "images/HUVEC-1/B02_s1_w1.png",  # no plate folder
        "images/../Plate1/B02_s1_w1.png",  # '..' as experiment
        "images/HUVEC..1/Plate1/B02_s1_w1.png",  # '..' inside experiment
        "images/HUVEC-1/Plate1/../B02_s1_w1.png",  # '..' component
        "images\\HUVEC-1\\Plate1\\B02_s1_w1.png",  # backslashes
        "images/HUVEC-1\\Plate1/B02_s1_w1.png",  # one backslash
        "images/HUVEC-1/Plate1/B02_s1_w1.tif",  # wrong extension
        "images/HUVEC-1/Plate1/B02_s1_w1.PNG",  # wrong case of extension
        "images/HUVEC-1/Plate1/B02_s1_w1.png.bak",  # trailing suffix
        "images/HUVEC_1/Plate1/B02_s1_w1.png",  # experiment with '_'
        "/images/HUVEC-1/Plate1/B02_s1_w1.png",  # absolute
        "HUVEC-1/Plate1/B02_s1_w1.png",  # no images/ prefix
        "",
    ],
)
def test_malformed_image_path(path: str) -> None:
    with pytest.raises(PathGrammarError) as excinfo:
        parse_image_path(path)
    assert repr(path) in str(excinfo.value)


@pytest.mark.parametrize(
    "site_id",
    [
        "HUVEC-1_1_AG01_1",  # bad row
        "HUVEC-1_1_B00_1",  # column 00
        "HUVEC-1_1_B49_1",  # column 49
        "HUVEC-1_1_B02",  # a well_id, no site
        "HUVEC-1_1_B02_0",  # site 0
        "HUVEC-1_0_B02_1",  # plate 0
        "HUVEC_1_1_B02_1",  # experiment with '_'
        "HUVEC..1_1_B02_1",  # '..' in experiment
        "HUVEC/1_1_B02_1",  # '/' in experiment
        "HUVEC-1_1_B02_1 ",  # trailing space
        "../HUVEC-1_1_B02_1",
        "",
    ],
)
def test_malformed_site_id(site_id: str) -> None:
    with pytest.raises(PathGrammarError) as excinfo:
        parse_site_id(site_id)
    assert repr(site_id) in str(excinfo.value)


@pytest.mark.parametrize(
    "well_id",
    [
        "HUVEC-1_1_AG01",
        "HUVEC-1_1_B00",
        "HUVEC-1_1_B49",
        "HUVEC-1_1",
        "HUVEC-1_1_B02_1",
        "HUVEC_1_1_B02",
        "A..B_1_B02",
    ],
)
def test_malformed_well_id(well_id: str) -> None:
    with pytest.raises(PathGrammarError) as excinfo:
        parse_well_id(well_id)
    assert repr(well_id) in str(excinfo.value)


@pytest.mark.parametrize("text", ["AG01", "B00", "B49", "b02", "B2", "B002", "02B", "", " B02", "A-1"])
def test_malformed_well_address(text: str) -> None:
    with pytest.raises(PathGrammarError) as excinfo:
        WellAddress.parse(text)
    assert repr(text) in str(excinfo.value)


@pytest.mark.parametrize(("row", "column"), [("AG", 1), ("a", 1), ("", 1), ("B", 0), ("B", 49)])
def test_invalid_well_address_fields(row: str, column: int) -> None:
    with pytest.raises(PathGrammarError):
        WellAddress(row, column)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"experiment": "HUVEC_1"},
        {"experiment": "HUVEC/1"},
        {"experiment": "a..b"},
        {"plate": 0},
        {"site": 0},
        {"channel": 0},
        {"site": True},  # a bool is not a site number
    ],
)
def test_invalid_key_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "experiment": "HUVEC-1",
        "plate": 1,
        "well": WellAddress("B", 2),
        "site": 1,
        "channel": 1,
    }
    fields.update(kwargs)
    with pytest.raises(PathGrammarError):
        ImageKey(**fields)  # type: ignore[arg-type]
