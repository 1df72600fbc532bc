"""The store's group and array documents, built in bulk from a plan (pure: returns ``{key: bytes}``).

Writing nodes one by one through zarr-python costs ~18 ms per site (../shared/RXRX2.md); building the JSON
documents directly and writing them as one batch costs a small fraction of a millisecond per site.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._layout import (
    INDEX_GROUP,
    THUMBNAIL_LEVEL,
    SiteArraySpec,
    group_document,
    image_attributes,
    plate_attributes,
    plate_title,
    well_attributes,
)
from ._paths import WellAddress, parse_site_id

__all__ = ["SiteChecksums", "dump", "site_document", "static_documents"]


def dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, allow_nan=False).encode()


def _conc(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class SiteChecksums:
    """The CRC32Cs of one written site: its pixels, its shard index (the shard's last 4 bytes) and its thumbnail
    chunk (that chunk's last 4 bytes). Recorded in the site document (the completion marker, so ``--resume``
    recovers them) and in the root index."""

    pixels: int
    shard: int
    thumbnail: int

    def to_json(self) -> dict[str, int]:
        return {"checksum": self.pixels, "shard_checksum": self.shard, "thumbnail_checksum": self.thumbnail}

    @classmethod
    def from_json(cls, attrs: Mapping[str, Any]) -> SiteChecksums | None:
        """The checksums in a site document's ``rxrx2`` attributes, or None if any is missing or not a uint32."""
        values = [attrs.get(k) for k in ("checksum", "shard_checksum", "thumbnail_checksum")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in values):
            return None
        return cls(*values)  # type: ignore[arg-type]


def _experiment_plate(site_id: str) -> tuple[str, int]:
    key = parse_site_id(site_id)
    return key.experiment, key.plate


def site_document(spec: SiteArraySpec, site_id: str, site: int, checksums: SiteChecksums | None) -> bytes:
    """The NGFF image group of one site, with its ``rxrx2`` attributes (its checksums, once written)."""
    sums: dict[str, int | None] = (
        dict(checksums.to_json()) if checksums else {"checksum": None, "shard_checksum": None, "thumbnail_checksum": None}
    )
    return dump(
        group_document(
            {
                # The image is named after its plate: napari-ome-zarr and ome-zarr-py name a whole plate's layers
                # after its first field's multiscales name (they ignore the plate's own name), so a site-id here
                # would label every plate view with one arbitrary site. The site_id is in the rxrx2 attributes.
                "ome": image_attributes(spec, plate_title(*_experiment_plate(site_id))),
                "rxrx2": {"site_id": site_id, "site": int(site), **sums},
            }
        )
    )


def static_documents(
    sites: pd.DataFrame, spec: SiteArraySpec, *, include_sites: bool = False,
    checksums: Sequence[SiteChecksums | None] | None = None,
) -> dict[str, bytes]:
    """Every group and array document of the tree below the root, except (unless asked) the site groups.

    ``sites`` are plan rows in store order (columns of metadata.csv plus ``row``, ``column``, ``path``).
    """
    docs: dict[str, bytes] = {}
    array_doc = dump(spec.array_metadata())
    thumbnail_doc = dump(spec.thumbnail_metadata())
    docs[f"{INDEX_GROUP}/zarr.json"] = dump(group_document({"rxrx2": {"description": "one array per metadata column"}}))
    for experiment, exp_rows in sites.groupby("experiment", sort=False):
        docs[f"{experiment}/zarr.json"] = dump(
            group_document(
                {
                    "rxrx2": {
                        "experiment": experiment,
                        "cell_type": str(exp_rows["cell_type"].iloc[0]),
                        "plates": sorted(int(p) for p in exp_rows["plate"].unique()),
                        "counts": {"plates": int(exp_rows["plate"].nunique()), "wells": int(exp_rows["well_id"].nunique()), "sites": len(exp_rows)},
                    }
                }
            )
        )
        for _, plate_rows in exp_rows.groupby("plate", sort=False):
            plate = int(plate_rows["plate"].iloc[0])
            plate_key = f"{experiment}/Plate{plate}"
            wells = [WellAddress.parse(w) for w in plate_rows["well"].unique()]
            field_count = int(plate_rows.groupby("well", sort=False).size().max())
            docs[f"{plate_key}/zarr.json"] = dump(
                group_document(
                    {
                        "ome": plate_attributes(plate_title(str(experiment), plate), wells, field_count),
                        "rxrx2": {
                            "experiment": experiment,
                            "plate": plate,
                            "counts": {
                                "wells": len(wells),
                                "sites": len(plate_rows),
                                "empty_wells": int(plate_rows.loc[plate_rows["treatment"] == "EMPTY", "well"].nunique()),
                                "treatments": int(plate_rows["treatment"].nunique()),
                            },
                        },
                    }
                )
            )
            for row in plate_rows["row"].unique():
                docs[f"{plate_key}/{row}/zarr.json"] = dump(group_document({}))
            for well, well_rows in plate_rows.groupby("well", sort=False):
                first = well_rows.iloc[0]
                well_key = f"{plate_key}/{first['row']}/{first['column']}"
                docs[f"{well_key}/zarr.json"] = dump(
                    group_document(
                        {
                            "ome": well_attributes([int(s) for s in well_rows["site"]]),
                            "rxrx2": {
                                "well_id": str(first["well_id"]),
                                "well": str(well),
                                "treatment": str(first["treatment"]),
                                "treatment_conc": _conc(first["treatment_conc"]),
                                "sites": len(well_rows),
                            },
                        }
                    )
                )
    rows = zip(sites["site_id"].tolist(), sites["site"].tolist(), sites["path"].tolist(), strict=True)
    for position, (site_id, site, path) in enumerate(rows):
        docs[f"{path}/zarr.json"] = array_doc
        group = path.rsplit("/", 1)[0]
        docs[f"{group}/{THUMBNAIL_LEVEL}/zarr.json"] = thumbnail_doc
        if include_sites:
            checksum = None if checksums is None else checksums[position]
            docs[f"{group}/zarr.json"] = site_document(spec, str(site_id), int(site), checksum)
    return docs
