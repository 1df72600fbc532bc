"""metadata.csv and embeddings.csv: the real sample loads with its quirks; malformed files are refused by name."""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from rxrx2_zarr._errors import MetadataError, SourceError
from rxrx2_zarr._schema import METADATA_COLUMNS, align_embeddings, load_embeddings, load_metadata

SUBSET = Path(__file__).parent / "data" / "rxrx2-metadata-subset.csv"
HEADER = ",".join(METADATA_COLUMNS)


@pytest.fixture(scope="module")
def subset() -> pd.DataFrame:
    return load_metadata(str(SUBSET))


@pytest.fixture(scope="module")
def subset_lines() -> list[str]:
    return SUBSET.read_text().splitlines()


# --- the real sample ---------------------------------------------------------------------------------------------


def test_subset_shape_and_dtypes(subset: pd.DataFrame) -> None:
    assert len(subset) == 18_207
    assert tuple(subset.columns) == METADATA_COLUMNS
    assert subset["plate"].dtype == np.int64
    assert subset["site"].dtype == np.int64
    assert subset["treatment_conc"].dtype == np.float64
    for column in ("site_id", "well_id", "cell_type", "experiment", "well", "treatment"):
        assert pd.api.types.is_string_dtype(subset[column]), column
    assert set(subset["cell_type"]) == {"HUVEC"}
    assert set(subset["experiment"]) == {"HUVEC-1", "HUVEC-2"}
    assert set(subset["plate"]) == set(range(1, 13))
    assert set(subset["site"]) == {1, 2, 3, 4}
    assert subset["site_id"].is_unique


def test_subset_blank_concentration_exactly_for_empty(subset: pd.DataFrame) -> None:
    missing = subset["treatment_conc"].isna()
    assert int(missing.sum()) == 7_579
    assert (missing == (subset["treatment"] == "EMPTY")).all()


def test_subset_float_artefacts_preserved(subset: pd.DataFrame) -> None:
    values = set(subset["treatment_conc"].dropna())
    for text in ("0.0009999999999999", "9.999999999999998e-05", "4.999999999999999e-05", "9.999999999999998"):
        assert float(text) in values, text
    assert float("0.0009999999999999") != 0.001  # the artefact is a distinct value, not rounded away
    assert 0.001 not in values


def test_subset_has_short_wells(subset: pd.DataFrame) -> None:
    sites_per_well = subset.groupby("well_id")["site"].apply(lambda s: tuple(sorted(s)))
    short = sites_per_well[sites_per_well.map(len) < 4]
    assert len(short) > 0
    assert (1, 2, 4) in set(short) or (2, 3, 4) in set(short)  # gaps, not only a truncated tail


def test_directory_with_older_file_name(tmp_path: Path) -> None:
    shutil.copy(SUBSET, tmp_path / "rxrx2-metadata.csv")
    assert len(load_metadata(str(tmp_path))) == 18_207


def test_directory_prefers_current_file_name(tmp_path: Path, subset_lines: list[str]) -> None:
    shutil.copy(SUBSET, tmp_path / "rxrx2-metadata.csv")
    (tmp_path / "metadata.csv").write_text("\n".join(subset_lines[:4]) + "\n")
    assert len(load_metadata(str(tmp_path))) == 3


def test_directory_without_metadata(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="metadata"):
        load_metadata(str(tmp_path))


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://rxrx2-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_load_through_fsspec_url(memory_root: str) -> None:
    with fsspec.open(f"{memory_root}/metadata.csv", "wb") as handle:
        handle.write(SUBSET.read_bytes())
    by_file = load_metadata(f"{memory_root}/metadata.csv")
    by_root = load_metadata(memory_root)
    assert len(by_file) == len(by_root) == 18_207
    pd.testing.assert_frame_equal(by_file, load_metadata(str(SUBSET)))


# --- malformed metadata ---------------------------------------------------------------------------------------------


def _write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "metadata.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _edit(lines: list[str], row: int, column: str, value: str) -> list[str]:
    """``lines`` (header first) with the field ``column`` of data row ``row`` (0-based) replaced."""
    out = list(lines)
    fields = out[row + 1].split(",")
    fields[METADATA_COLUMNS.index(column)] = value
    out[row + 1] = ",".join(fields)
    return out


@pytest.fixture
def sample(subset_lines: list[str]) -> list[str]:
    """The header and the first 12 rows of the real sample (EMPTY and treated wells)."""
    return subset_lines[:13]


def test_sample_is_valid(tmp_path: Path, sample: list[str]) -> None:
    assert len(load_metadata(_write(tmp_path, sample))) == 12


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (METADATA_COLUMNS[:-1], "missing column(s) ['treatment_conc']"),
        ((*METADATA_COLUMNS, "extra"), "unexpected column(s) ['extra']"),
        (("well_id", "site_id", *METADATA_COLUMNS[2:]), "wrong order"),
        (tuple(c if c != "plate" else "Plate" for c in METADATA_COLUMNS), "'plate'"),
    ],
)
def test_bad_header(tmp_path: Path, sample: list[str], header: tuple[str, ...], expected: str) -> None:
    lines = [",".join(header)]
    for line in sample[1:]:
        fields = dict(zip(METADATA_COLUMNS, line.split(","), strict=True))
        lines.append(",".join(fields.get(c, "x") for c in header))
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, lines))
    assert expected in str(excinfo.value)


def _assert_names(message: str, *, line: int, site_id: str, column: str, value: str) -> None:
    assert f"line {line}" in message, message
    assert site_id in message, message
    assert f"'{column}'" in message, message
    assert repr(value) in message, message


# (row to edit, column, bad value): each message must name the line, the site_id, the column and the value.
CELL_ERRORS = [
    pytest.param(2, "well", "AG01", id="bad-well-row"),
    pytest.param(3, "well", "B49", id="bad-well-column"),
    pytest.param(4, "plate", "1.5", id="non-integer-plate"),
    pytest.param(5, "plate", "one", id="text-plate"),
    pytest.param(6, "site", "0", id="site-zero"),
    pytest.param(7, "treatment_conc", "abc", id="non-numeric-conc"),
    pytest.param(7, "treatment_conc", "-0.1", id="negative-conc"),
    pytest.param(7, "treatment_conc", "inf", id="infinite-conc"),
    pytest.param(1, "experiment", "HUVEC/1", id="slash-in-experiment"),
    pytest.param(1, "experiment", "HUVEC..1", id="dots-in-experiment"),
    pytest.param(5, "treatment", "STx/1", id="slash-in-treatment"),
    pytest.param(5, "treatment", "..", id="dots-treatment"),
    pytest.param(5, "treatment", "a..b", id="dots-in-treatment"),
    pytest.param(5, "treatment", "", id="empty-treatment"),
]


@pytest.mark.parametrize(("row", "column", "value"), CELL_ERRORS)
def test_bad_cell(tmp_path: Path, sample: list[str], row: int, column: str, value: str) -> None:
    site_id = sample[row + 1].split(",")[0]
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, _edit(sample, row, column, value)))
    _assert_names(str(excinfo.value), line=row + 2, site_id=site_id, column=column, value=value)


def test_inconsistent_well_id(tmp_path: Path, sample: list[str]) -> None:
    site_id = sample[3].split(",")[0]
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, _edit(sample, 2, "well_id", "HUVEC-1_1_B02")))
    _assert_names(str(excinfo.value), line=4, site_id=site_id, column="well_id", value="HUVEC-1_1_B02")


def test_inconsistent_site_id(tmp_path: Path, sample: list[str]) -> None:
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, _edit(sample, 2, "site_id", "HUVEC-1_1_AA35_4")))
    message = str(excinfo.value)
    _assert_names(message, line=4, site_id="HUVEC-1_1_AA35_4", column="site_id", value="HUVEC-1_1_AA35_4")
    assert "'HUVEC-1_1_AA35_3'" in message  # what it should have been


def test_duplicate_site_id(tmp_path: Path, sample: list[str]) -> None:
    lines = [*sample, sample[5]]
    duplicate = sample[5].split(",")[0]
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, lines))
    message = str(excinfo.value)
    assert "duplicate" in message
    _assert_names(message, line=len(lines), site_id=duplicate, column="site_id", value=duplicate)
    assert "line 6" in message  # where it first appeared


def test_every_problem_is_listed(tmp_path: Path, sample: list[str]) -> None:
    lines = _edit(_edit(sample, 2, "plate", "x"), 6, "treatment_conc", "y")
    with pytest.raises(MetadataError) as excinfo:
        load_metadata(_write(tmp_path, lines))
    message = str(excinfo.value)
    assert "2 problems" in message
    assert "line 4" in message and "line 8" in message


# --- embeddings ------------------------------------------------------------------------------------------------------


def _embeddings_text(
    site_ids: list[str], dim: int, edit: Callable[[list[list[str]]], None] | None = None
) -> str:
    rng = np.random.default_rng(0)
    rows = [[s, *(f"{v:.6g}" for v in rng.standard_normal(dim))] for s in site_ids]
    if edit is not None:
        edit(rows)
    header = ["site_id", *(f"feature_{j}" for j in range(dim))]
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


@pytest.fixture
def site_ids(subset: pd.DataFrame) -> list[str]:
    return list(subset["site_id"].iloc[:10])


@pytest.mark.parametrize("dim", [5, 128])
def test_embeddings_width_inferred(tmp_path: Path, site_ids: list[str], dim: int) -> None:
    path = tmp_path / "embeddings.csv"
    path.write_text(_embeddings_text(site_ids, dim))
    emb = load_embeddings(str(path))
    assert emb.dim == dim
    assert emb.feature_names == tuple(f"feature_{j}" for j in range(dim))
    assert emb.site_ids == tuple(site_ids)
    assert emb.matrix.shape == (10, dim) and emb.matrix.dtype == np.float32
    assert load_embeddings(str(tmp_path)).dim == dim  # a dataset root works too


def test_embeddings_older_file_name(tmp_path: Path, site_ids: list[str]) -> None:
    (tmp_path / "rxrx2-embeddings.csv").write_text(_embeddings_text(site_ids, 3))
    assert load_embeddings(str(tmp_path)).dim == 3


def test_embeddings_wrong_width(tmp_path: Path, site_ids: list[str]) -> None:
    path = tmp_path / "embeddings.csv"
    path.write_text(_embeddings_text(site_ids, 5, lambda rows: rows[3].pop()))
    with pytest.raises(MetadataError) as excinfo:
        load_embeddings(str(path))
    message = str(excinfo.value)
    assert (
        "line 5" in message
        and repr(site_ids[3]) in message
        and "5 fields" in message
        and "expected 6" in message
    )


def test_embeddings_non_numeric(tmp_path: Path, site_ids: list[str]) -> None:
    def edit(rows: list[list[str]]) -> None:
        rows[6][3] = "abc"

    path = tmp_path / "embeddings.csv"
    path.write_text(_embeddings_text(site_ids, 5, edit))
    with pytest.raises(MetadataError) as excinfo:
        load_embeddings(str(path))
    _assert_names(str(excinfo.value), line=8, site_id=site_ids[6], column="feature_2", value="abc")


def test_embeddings_duplicate_id(tmp_path: Path, site_ids: list[str]) -> None:
    def edit(rows: list[list[str]]) -> None:
        rows[7][0] = site_ids[2]

    path = tmp_path / "embeddings.csv"
    path.write_text(_embeddings_text(site_ids, 5, edit))
    with pytest.raises(MetadataError) as excinfo:
        load_embeddings(str(path))
    message = str(excinfo.value)
    assert "duplicate" in message and repr(site_ids[2]) in message and "line 9" in message


def test_align_embeddings(tmp_path: Path, site_ids: list[str]) -> None:
    path = tmp_path / "embeddings.csv"
    # The file lacks site_ids[0] and has an id the metadata does not know; its order is reversed.
    in_file = [*reversed(site_ids[1:]), "HUVEC-9_1_B02_1"]
    path.write_text(_embeddings_text(in_file, 4))
    emb = load_embeddings(str(path))
    aligned = align_embeddings(emb, site_ids)
    assert aligned.missing == (site_ids[0],)
    assert aligned.unknown == ("HUVEC-9_1_B02_1",)
    assert aligned.matrix.shape == (10, 4)
    assert np.isnan(aligned.matrix[0]).all()
    for i, site_id in enumerate(site_ids[1:], start=1):
        np.testing.assert_array_equal(aligned.matrix[i], emb.matrix[emb.site_ids.index(site_id)])
    # Unknown is judged against the full metadata when a subset of sites is aligned.
    partial = align_embeddings(emb, site_ids[1:3], known_site_ids=[*site_ids, "HUVEC-9_1_B02_1"])
    assert partial.missing == () and partial.unknown == ()
    assert not math.isnan(float(partial.matrix[0, 0]))
