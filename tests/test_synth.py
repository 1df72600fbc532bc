"""The RxRx2-shaped generator: layout, files, determinism, realism at full size."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pytest

from rxrx2_zarr._errors import StoreExistsError
from rxrx2_zarr._paths import GRID_ROWS, image_path, parse_image_path, parse_site_id
from rxrx2_zarr._schema import METADATA_COLUMNS, load_embeddings, load_metadata
from rxrx2_zarr.testing import EMPTY, FACTORS, SynthReport, dose_series, render_site, site_embeddings, synth
from rxrx2_zarr.testing._phenotype import strength
from rxrx2_zarr.testing._plates import plate_layout

SUBSET = Path(__file__).parent / "data" / "rxrx2-metadata-subset.csv"
SMALL = 64
ARGS = {"experiments": 2, "plates": 2, "wells": 6, "sites": 4, "size": SMALL, "embedding_dim": 8, "seed": 3}


def _hashes(root: Path) -> dict[str, str]:
    return {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


def _raw_rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthReport]:
    out = tmp_path_factory.mktemp("synth") / "one"
    return out, synth(str(out), workers=1, **ARGS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_parallel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "two"
    synth(str(out), workers=2, **ARGS)  # type: ignore[arg-type]
    return out


# --- structure -------------------------------------------------------------------------------------------------------


def test_deterministic_whatever_the_workers(small: tuple[Path, SynthReport], small_parallel: Path) -> None:
    one, two = _hashes(small[0]), _hashes(small_parallel)
    assert one == two
    assert len(one) == 2 + 6 * small[1].n_sites


def test_seed_changes_everything(small: tuple[Path, SynthReport], tmp_path: Path) -> None:
    other = tmp_path / "other"
    synth(str(other), **{**ARGS, "seed": 4})  # type: ignore[arg-type]
    mine, theirs = _hashes(small[0]), _hashes(other)
    assert mine["embeddings.csv"] != theirs["embeddings.csv"]
    common = set(mine) & set(theirs) - {"metadata.csv", "embeddings.csv"}
    assert all(mine[p] != theirs[p] for p in common)


def test_metadata_columns_and_values(small: tuple[Path, SynthReport]) -> None:
    root, report = small
    header = (root / "metadata.csv").read_text().splitlines()[0]
    assert header == ",".join(METADATA_COLUMNS)
    frame = load_metadata(str(root))  # the package's own validation accepts it
    assert len(frame) == report.n_sites
    assert set(frame["cell_type"]) == {"HUVEC"}
    assert set(frame["experiment"]) == {"HUVEC-1", "HUVEC-2"}
    assert set(frame["plate"]) == {1, 2}
    assert set(frame["treatment"]) <= {EMPTY, *FACTORS}
    for row in _raw_rows(root):
        key = parse_site_id(row["site_id"])
        assert (key.experiment, key.plate, str(key.well), key.site) == (
            row["experiment"],
            int(row["plate"]),
            row["well"],
            int(row["site"]),
        )
        assert row["well_id"] == key.well_id
        # Interior of the 1536-well plate: rows B..AE, columns 02..47.
        assert 1 <= key.well.row_index <= 30 and 2 <= key.well.column <= 47
        if row["treatment"] != EMPTY:
            assert row["treatment_conc"] in dose_series(row["treatment"])


def test_metadata_order(small: tuple[Path, SynthReport]) -> None:
    keys = [parse_site_id(r["site_id"]) for r in _raw_rows(small[0])]
    order = [(k.experiment, k.plate, k.well.row_index, k.well.column, k.site) for k in keys]
    assert order == sorted(order)


def test_empty_controls_in_every_plate(small: tuple[Path, SynthReport]) -> None:
    rows = _raw_rows(small[0])
    plates = {(r["experiment"], r["plate"]) for r in rows}
    assert len(plates) == 4
    for plate in plates:
        in_plate = [r for r in rows if (r["experiment"], r["plate"]) == plate]
        assert any(r["treatment"] == EMPTY for r in in_plate), plate
    for r in rows:
        assert (r["treatment_conc"] == "") == (r["treatment"] == EMPTY), r


def test_short_wells(small: tuple[Path, SynthReport]) -> None:
    frame = load_metadata(str(small[0]))
    per_well = frame.groupby("well_id")["site"].apply(tuple)
    short = per_well[per_well.map(len) < 4]
    # 24 wells x 4 sites: round(96 * 527 / 132480) = 0, but a layout of >= 4 wells has at least one short well.
    assert len(short) == 1
    assert all(len(sites) >= 1 and set(sites) < {1, 2, 3, 4} for sites in short)


def test_every_image_present_and_parses(small: tuple[Path, SynthReport]) -> None:
    root, report = small
    found = {p.relative_to(root).as_posix() for p in (root / "images").rglob("*") if p.is_file()}
    expected = {
        path
        for site_id in load_metadata(str(root))["site_id"]
        for path in parse_site_id(site_id).image_paths()
    }
    assert found == expected
    assert len(found) == report.n_images == 6 * report.n_sites
    for path in sorted(found)[:12]:
        key = parse_image_path(path)
        assert image_path(key) == path
        pixels = imagecodecs.png_decode((root / path).read_bytes())
        assert pixels.shape == (SMALL, SMALL) and pixels.dtype == np.uint8


def test_report_matches_files(small: tuple[Path, SynthReport]) -> None:
    root, report = small
    files = [p for p in (root / "images").rglob("*.png")]
    assert report.png_bytes == sum(p.stat().st_size for p in files)
    assert report.mean_png_bytes == pytest.approx(report.png_bytes / len(files))
    assert report.out == str(root) and report.seconds > 0
    # Channel figures are pooled over every pixel written.
    w1 = np.concatenate(
        [imagecodecs.png_decode(p.read_bytes()).ravel() for p in files if p.name.endswith("_w1.png")]
    )
    assert report.channel_means[0] == pytest.approx(float(w1.mean()))
    assert report.channel_stds[0] == pytest.approx(float(w1.std()))
    assert "w6" in report.summary() and "KB" in report.summary()


def test_embeddings_file(small: tuple[Path, SynthReport]) -> None:
    root, _ = small
    header = (root / "embeddings.csv").read_text().splitlines()[0]
    assert header == ",".join(["site_id", *(f"feature_{j}" for j in range(8))])
    emb = load_embeddings(str(root))
    assert emb.dim == 8
    assert list(emb.site_ids) == list(load_metadata(str(root))["site_id"])
    assert np.isfinite(emb.matrix).all()


def test_refuses_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(StoreExistsError, match="exists"):
        synth(str(tmp_path), size=16, wells=1, experiments=1, plates=1, sites=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synth(str(empty), size=16, wells=1, experiments=1, plates=1, sites=1).n_sites == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wells": 0},
        {"wells": 1381},
        {"sites": 0},
        {"sites": 5},
        {"size": 15},
        {"experiments": 0},
        {"plates": 0},
        {"embedding_dim": 0},
        {"workers": 0},
        {"seed": -1},
        {"limit": 0},
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        synth(str(tmp_path / "out"), **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_limit_keeps_the_first_sites(tmp_path: Path, small: tuple[Path, SynthReport]) -> None:
    out = tmp_path / "limited"
    report = synth(str(out), limit=5, metadata_only=True, **ARGS)  # type: ignore[arg-type]
    assert report.n_sites == 5 and report.n_images == 0
    full = (small[0] / "metadata.csv").read_text().splitlines()
    assert (out / "metadata.csv").read_text().splitlines() == full[:6]


# --- from real metadata ---------------------------------------------------------------------------------------------


def test_from_real_metadata(tmp_path: Path) -> None:
    out = tmp_path / "real"
    report = synth(str(out), from_metadata=str(SUBSET), limit=8, size=32, embedding_dim=5)
    original = SUBSET.read_text().splitlines()
    assert (out / "metadata.csv").read_text().splitlines() == original[:9]  # text unchanged, blanks included
    site_ids = [line.split(",")[0] for line in original[1:9]]
    assert report.n_sites == 8 and report.n_images == 48
    pngs = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    assert pngs == {path for s in site_ids for path in parse_site_id(s).image_paths()}
    assert list(load_embeddings(str(out)).site_ids) == site_ids


def test_from_real_metadata_keeps_float_artefacts(tmp_path: Path) -> None:
    lines = SUBSET.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith(",0.0009999999999999"))
    source = tmp_path / "src"
    source.mkdir()
    (source / "rxrx2-metadata.csv").write_text("\n".join([lines[0], lines[index - 1], lines[index]]) + "\n")
    out = tmp_path / "out"
    synth(str(out), from_metadata=str(source), metadata_only=True, embedding_dim=3)
    assert (out / "metadata.csv").read_text().splitlines() == [lines[0], lines[index - 1], lines[index]]


# --- full scale ------------------------------------------------------------------------------------------------------


def test_full_layout_metadata_only(tmp_path: Path) -> None:
    out = tmp_path / "full"
    report = synth(str(out), experiments=2, plates=12, wells=1380, metadata_only=True)
    assert report.n_sites == 131_953 and report.n_images == 0
    assert not (out / "images").exists()
    frame = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(frame) == 131_953 and tuple(frame.columns) == METADATA_COLUMNS
    assert frame["site_id"].is_unique
    wells = frame.drop_duplicates("well_id")
    assert len(wells) == 2 * 12 * 1380
    assert (wells.groupby(["experiment", "plate"]).size() == 1380).all()
    assert int((wells["treatment"] == EMPTY).sum()) == 1896  # as in the release
    assert wells["treatment"].nunique() == 434  # 433 factors + EMPTY
    assert (frame["treatment_conc"] == "").sum() == (frame["treatment"] == EMPTY).sum()
    with (out / "embeddings.csv").open("rb") as handle:
        header = handle.readline().decode().rstrip("\n").split(",")
        assert header == ["site_id", *(f"feature_{j}" for j in range(128))]
        assert sum(1 for _ in handle) == 131_953


def test_one_plateplate_layout() -> None:
    rows = plate_layout(1, 1, 1380, 4, seed=0)
    assert len(rows) == 1380 * 4 - round(1380 * 4 * 527 / 132480)
    wells = {r.key.well_id: r for r in rows}
    assert len(wells) == 1380  # every interior well
    assert {r.key.well.row for r in rows} == set(GRID_ROWS[1:31])
    assert sum(r.treatment == EMPTY for r in wells.values()) == 79
    assert len({r.treatment for r in wells.values()}) == 434
    # Plates 1-2 carry the highest dose of each factor.
    assert {r.conc_text for r in wells.values() if r.treatment != EMPTY} == {
        dose_series(f)[-1] for f in FACTORS
    }


# --- signal ------------------------------------------------------------------------------------------------------------


def test_treatments_move_embeddings() -> None:
    keys = [parse_site_id(f"HUVEC-1_1_C{c:02d}_{s}") for c in range(2, 22) for s in (1, 2)]
    n = len(keys)
    strong = max(FACTORS[:37], key=lambda f: strength(0, f, 0.1))
    empty = site_embeddings(keys, [EMPTY] * n, [math.nan] * n, 64)
    treated = site_embeddings(keys, [strong] * n, [0.1] * n, 64)
    treated_low = site_embeddings(keys, [strong] * n, [1e-6] * n, 64)
    spread = float(
        np.linalg.norm(empty - empty.mean(axis=0), axis=1).mean()
    )  # a site's distance to its group
    shift = float(np.linalg.norm(treated.mean(axis=0) - empty.mean(axis=0)))
    assert shift > 0.5 * spread  # visible site by site, not only on average
    assert (
        float(np.linalg.norm(treated_low.mean(axis=0) - empty.mean(axis=0))) < 0.5 * shift
    )  # dose-dependent
    assert strength(0, strong, 1e-6) < strength(0, strong, 1e-3) < strength(0, strong, 0.1)


def test_render_site_is_deterministic_and_treatment_dependent() -> None:
    a = render_site("HUVEC-1_1_B02_1", EMPTY, math.nan, size=48, seed=1)
    assert a.shape == (6, 48, 48) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_site("HUVEC-1_1_B02_1", EMPTY, math.nan, size=48, seed=1))
    assert not np.array_equal(a, render_site("HUVEC-1_1_B02_2", EMPTY, math.nan, size=48, seed=1))
    differs = [
        not np.array_equal(a, render_site("HUVEC-1_1_B02_1", f, 0.1, size=48, seed=1)) for f in FACTORS[:5]
    ]
    assert any(differs)


# --- realism ---------------------------------------------------------------------------------------------------------


def test_realism_at_full_size(tmp_path: Path) -> None:
    """Two 1024 x 1024 sites (a control and a treated well): intensities and PNG sizes like the real release."""
    report = synth(
        str(tmp_path / "big"), experiments=1, plates=1, wells=2, sites=1, size=1024, embedding_dim=4
    )
    assert report.n_sites == 2 and report.n_images == 12
    for c, (mean, std) in enumerate(zip(report.channel_means, report.channel_stds, strict=True), start=1):
        assert 3.0 <= mean <= 20.0, (c, mean)
        assert 3.0 <= std <= 15.0, (c, std)
    assert 150_000 <= report.mean_png_bytes <= 350_000, report.mean_png_bytes


def test_generator_is_off_the_core_import_path() -> None:
    """The core (reader, writer, verify, info, the CLI module) never imports the generator, the timing helpers or
    the demo; loading the ``rxrx2.vpredict`` codec through zarr's entry point imports neither them nor pandas."""
    script = (
        "import json, sys, zarr\n"
        "zarr.registry.get_codec_class('rxrx2.vpredict')\n"
        "codec = sorted(sys.modules)\n"
        "import rxrx2_zarr._convert, rxrx2_zarr._verify, rxrx2_zarr._info, rxrx2_zarr._transcode, rxrx2_zarr.cli\n"
        "print(json.dumps({'codec': codec, 'core': sorted(sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "rxrx2_zarr._codec" in loaded["codec"]
    assert not [m for m in loaded["codec"] if m.split(".")[0] == "pandas" or m.startswith("rxrx2_zarr.testing")]
    assert "pandas" in loaded["core"]  # the converter does import pandas: the check above can see it
    assert not [m for m in loaded["core"] if m.startswith("rxrx2_zarr.testing")]
