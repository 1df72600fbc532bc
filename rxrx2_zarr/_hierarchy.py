"""The store's group and array documents, built in bulk from a plan (pure: returns ``{key: bytes}``).

Writing nodes one by one through zarr-python costs ~18 ms per site (../shared/RXRX2.md); building the JSON
documents directly and writing them as one batch costs a small fraction of a millisecond per site.

Each document is built from typed models: the ``rxrx2`` attributes from ``_attrs.py``, the NGFF 0.5 parts (image
multiscales and omero, plate, well) from ome-zarr-models', which check them as they are built. ome-zarr-models
imports zarr-python and pydantic-zarr (about 0.3 s), so it is imported on the first document built, not with this
module. An image's NGFF attributes depend only on the array spec and the plate, so they are built once per plate.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ._attrs import (
    ExperimentAttributes,
    ExperimentCounts,
    IndexAttributes,
    PlateAttributes,
    PlateCounts,
    SiteAttributes,
    SiteChecksums,
    ThumbnailAttributes,
    WellAttributes,
)
from ._channels import CHANNEL_SPECS
from ._layout import (
    INDEX_GROUP,
    LEVEL,
    NGFF_VERSION,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    SiteArraySpec,
    plate_name,
)
from ._paths import GRID_COLUMNS, GRID_ROWS, WellAddress, parse_site_id

__all__ = ["SiteChecksums", "dump", "group_document", "site_document", "static_documents"]


def dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, allow_nan=False).encode()


def group_document(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}


def _ngff(model: Any) -> dict[str, Any]:
    document: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return document


def plate_title(experiment: str, plate: int) -> str:
    """A plate's display name (``HUVEC-1 plate 3``): the NGFF plate's name and every site image's name."""
    return f"{experiment} plate {plate}"


def _omero() -> Any:
    from ome_zarr_models.common.omero import Channel, Omero, Window

    # omero is not part of NGFF 0.5 proper: the models allow its optional keys (label, active, ...) as extras
    channels = [
        Channel.model_validate(
            {
                "color": spec.hex_color,
                "window": Window(start=spec.window[0], end=spec.window[1], min=0, max=255),
                "label": spec.label,
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
            }
        )
        for spec in CHANNEL_SPECS
    ]
    return Omero.model_validate({"channels": channels, "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0}})


@functools.lru_cache(maxsize=64)
def image_attributes(spec: SiteArraySpec, name: str) -> Mapping[str, Any]:
    """NGFF 0.5 ``multiscales`` + ``omero`` of a site image group: the full level and the thumbnail level (the
    same for every site of a plate: cached, and never modified by callers)."""
    from ome_zarr_models.v05.axes import Axis
    from ome_zarr_models.v05.coordinate_transformations import VectorScale, VectorTranslation
    from ome_zarr_models.v05.image import ImageAttrs
    from ome_zarr_models.v05.multiscales import Dataset, Multiscale

    unit = None if spec.pixel_size is None else "micrometer"
    scale = 1.0 if spec.pixel_size is None else spec.pixel_size
    thumb = scale * THUMBNAIL_FACTOR
    shift = scale * (THUMBNAIL_FACTOR - 1) / 2  # a thumbnail pixel is the mean of a block: it sits at its centre
    datasets = (
        Dataset(path=LEVEL, coordinateTransformations=(VectorScale(type="scale", scale=[1.0, scale, scale]),)),
        Dataset(
            path=THUMBNAIL_LEVEL,
            coordinateTransformations=(
                VectorScale(type="scale", scale=[1.0, thumb, thumb]),
                VectorTranslation(type="translation", translation=[0.0, shift, shift]),
            ),
        ),
    )
    axes = [Axis(name="c", type="channel"), Axis(name="y", type="space", unit=unit), Axis(name="x", type="space", unit=unit)]
    multiscale = Multiscale(name=name, axes=axes, datasets=datasets)
    return _ngff(ImageAttrs.model_validate({"version": NGFF_VERSION, "multiscales": [multiscale], "omero": _omero()}))


def plate_attributes(name: str, wells: Sequence[WellAddress], field_count: int) -> dict[str, Any]:
    """NGFF 0.5 ``plate``: every row and column of the physical 1536-well plate, and the wells present."""
    from ome_zarr_models.exceptions import ValidationWarning
    from ome_zarr_models.v05.hcs import HCSAttrs
    from ome_zarr_models.v05.plate import Column, Plate, Row, WellInPlate

    present = [
        WellInPlate(path=f"{w.row}/{w.column_name}", rowIndex=w.row_index, columnIndex=w.column_index)
        for w in sorted(wells, key=lambda w: (w.row_index, w.column))
    ]
    with warnings.catch_warnings():
        # NGFF 0.5 moved the version to the "ome" key; ome-zarr-models still warns when a plate has none of its own
        warnings.simplefilter("ignore", ValidationWarning)
        plate = Plate(
            name=name,
            rows=[Row(name=r) for r in GRID_ROWS],
            columns=[Column(name=c) for c in GRID_COLUMNS],
            wells=present,
            field_count=field_count,
        )
        document = _ngff(HCSAttrs(version=NGFF_VERSION, plate=plate))  # which validates the plate again
    document["plate"].pop("version", None)  # the default it filled in: the version is the "ome" key's
    return document


def well_attributes(sites: Sequence[int]) -> dict[str, Any]:
    """NGFF 0.5 ``well``: its fields (sites), by path."""
    from ome_zarr_models.v05.well import WellAttrs
    from ome_zarr_models.v05.well_types import WellImage, WellMeta

    images = [WellImage(path=str(s), acquisition=None) for s in sorted(sites)]
    return _ngff(WellAttrs(version=NGFF_VERSION, well=WellMeta(images=images, version=None)))


def site_document(spec: SiteArraySpec, site_id: str, site: int, checksums: SiteChecksums | None) -> bytes:
    """The NGFF image group of one site, with its ``rxrx2`` attributes (its checksums, once written)."""
    key = parse_site_id(site_id)
    return dump(
        group_document(
            {
                # The image is named after its plate: napari-ome-zarr and ome-zarr-py name a whole plate's layers
                # after its first field's multiscales name (they ignore the plate's own name), so a site-id here
                # would label every plate view with one arbitrary site. The site_id is in the rxrx2 attributes.
                "ome": image_attributes(spec, plate_title(key.experiment, key.plate)),
                "rxrx2": SiteAttributes.of(site_id, int(site), checksums).to_json(),
            }
        )
    )


def thumbnail_document(spec: SiteArraySpec) -> dict[str, Any]:
    """A site's thumbnail array document, saying what its pixels are."""
    return spec.thumbnail_metadata() | {"attributes": {"rxrx2": ThumbnailAttributes().to_json()}}


def _conc(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


def _experiment_document(experiment: str, rows: pd.DataFrame) -> bytes:
    counts = ExperimentCounts(plates=int(rows["plate"].nunique()), wells=int(rows["well_id"].nunique()), sites=len(rows))
    attrs = ExperimentAttributes(
        experiment=experiment,
        cell_type=str(rows["cell_type"].iloc[0]),
        plates=sorted(int(p) for p in rows["plate"].unique()),
        counts=counts,
    )
    return dump(group_document({"rxrx2": attrs.to_json()}))


def _plate_documents(experiment: str, plate: int, rows: pd.DataFrame) -> dict[str, bytes]:
    """The plate group, its row groups and its well groups."""
    plate_key = f"{experiment}/{plate_name(plate)}"
    wells = [WellAddress.parse(w) for w in rows["well"].unique()]
    counts = PlateCounts(
        wells=len(wells),
        sites=len(rows),
        empty_wells=int(rows.loc[rows["treatment"] == "EMPTY", "well"].nunique()),
        treatments=int(rows["treatment"].nunique()),
    )
    attrs = PlateAttributes(experiment=experiment, plate=plate, counts=counts)
    ngff = plate_attributes(plate_title(experiment, plate), wells, int(rows.groupby("well", sort=False).size().max()))
    docs = {f"{plate_key}/zarr.json": dump(group_document({"ome": ngff, "rxrx2": attrs.to_json()}))}
    for row in rows["row"].unique():
        docs[f"{plate_key}/{row}/zarr.json"] = dump(group_document({}))
    for well, well_rows in rows.groupby("well", sort=False):
        first = well_rows.iloc[0]
        well_attrs = WellAttributes(
            well_id=str(first["well_id"]),
            well=str(well),
            treatment=str(first["treatment"]),
            treatment_conc=_conc(first["treatment_conc"]),
            sites=len(well_rows),
        )
        ngff = well_attributes([int(s) for s in well_rows["site"]])
        docs[f"{plate_key}/{first['row']}/{first['column']}/zarr.json"] = dump(
            group_document({"ome": ngff, "rxrx2": well_attrs.to_json()})
        )
    return docs


def static_documents(sites: pd.DataFrame, spec: SiteArraySpec, *, include_sites: bool = False) -> dict[str, bytes]:
    """Every group and array document of the tree below the root, except (unless asked) the site groups.

    ``sites`` are plan rows in store order (columns of metadata.csv plus ``row``, ``column``, ``path``).
    """
    docs: dict[str, bytes] = {f"{INDEX_GROUP}/zarr.json": dump(group_document({"rxrx2": IndexAttributes().to_json()}))}
    for experiment, exp_rows in sites.groupby("experiment", sort=False):
        docs[f"{experiment}/zarr.json"] = _experiment_document(str(experiment), exp_rows)
        for _, plate_rows in exp_rows.groupby("plate", sort=False):
            docs.update(_plate_documents(str(experiment), int(plate_rows["plate"].iloc[0]), plate_rows))
    array_doc = dump(spec.array_metadata())
    thumbnail_doc = dump(thumbnail_document(spec))
    rows = zip(sites["site_id"].tolist(), sites["site"].tolist(), sites["path"].tolist(), strict=True)
    for site_id, site, path in rows:
        group = path.rsplit("/", 1)[0]
        docs[f"{path}/zarr.json"] = array_doc
        docs[f"{group}/{THUMBNAIL_LEVEL}/zarr.json"] = thumbnail_doc
        if include_sites:
            docs[f"{group}/zarr.json"] = site_document(spec, str(site_id), int(site), None)
    return docs
