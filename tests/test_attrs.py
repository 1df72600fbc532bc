"""The typed models of the rxrx2 attributes: what the converter writes is what they parse, and what they refuse
names the store and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rxrx2_zarr import StoreFormatError
from rxrx2_zarr._attrs import (
    EmbeddingsAttributes,
    ExperimentAttributes,
    IndexAttributes,
    PlateAttributes,
    RootAttributes,
    SiteAttributes,
    ThumbnailAttributes,
    WellAttributes,
)
from rxrx2_zarr._layout import LAYOUT_VERSION, TRANSCODABLE_LAYOUTS

LAYOUT1 = Path(__file__).parent / "data" / "layout1" / "balanced.zarr"


def document(store: Path, key: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((store / key / "zarr.json").read_text())
    return doc


def model_for(key: str) -> type[Any] | None:
    """The model of a node's rxrx2 attributes, from its place in the layout (None: a node without any)."""
    depth = len(key.split("/"))
    if key == "index":
        return IndexAttributes
    if key == "embeddings":
        return EmbeddingsAttributes
    if key.startswith("index/"):
        return None
    if depth == 6:  # a site's levels: the full one has no attributes of its own
        return ThumbnailAttributes if key.endswith("/1") else None
    return {1: ExperimentAttributes, 2: PlateAttributes, 4: WellAttributes, 5: SiteAttributes}.get(depth)  # 3: row


def test_every_stored_document_is_what_its_model_writes(store: Path) -> None:
    """Each node's rxrx2 attributes parse with their model and dump back to exactly what is stored: the writer
    builds them with the same models the readers use."""
    root = document(store)
    assert RootAttributes.from_json(root, str(store)).to_json() == root["attributes"]["rxrx2"]
    checked: set[str] = set()
    for path in sorted(store.rglob("zarr.json")):
        key = path.parent.relative_to(store).as_posix()
        model = model_for(key)
        attrs = json.loads(path.read_text()).get("attributes", {}).get("rxrx2")
        if key == "." or model is None:
            continue
        assert attrs is not None, key
        assert model.parse(attrs, key).to_json() == attrs, key
        checked.add(model.__name__)
    assert checked == {
        "ExperimentAttributes",
        "PlateAttributes",
        "WellAttributes",
        "SiteAttributes",
        "ThumbnailAttributes",
        "IndexAttributes",
        "EmbeddingsAttributes",
    }


def test_layout_1_root_parses_for_transcode() -> None:
    root = document(LAYOUT1)
    attrs = RootAttributes.from_json(root, "old.zarr", layouts=TRANSCODABLE_LAYOUTS)
    assert attrs.layout_version == 1 and attrs.options.profile == "balanced" and attrs.index.parquet is None
    assert attrs.options.spec().shape == (6, 48, 48)
    with pytest.raises(StoreFormatError, match=r"old\.zarr: layout version 1 .*rxrx2-zarr transcode old\.zarr"):
        RootAttributes.from_json(root, "old.zarr")


def _changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out["attributes"]["rxrx2"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pixels", "yes"),
        ("complete", 1),
        ("options.height", "96"),
        ("options.inner_chunks", "32,32"),
        ("index.parquet_crc32c", -1),
        ("counts.sites", 2.5),
        ("source.png_bytes", None),
        ("skipped", [{"site_id": "x"}]),
    ],
)
def test_a_wrong_field_is_refused_by_name(store: Path, field: str, value: Any) -> None:
    bad = _changed(document(store), field, value)
    with pytest.raises(StoreFormatError) as caught:
        RootAttributes.from_json(bad, "/data/s.zarr")
    message = str(caught.value)
    assert message.startswith("/data/s.zarr: root attributes: ") and field.split(".")[0] in message, message


def test_not_ours_and_unknown_layouts(store: Path) -> None:
    root = document(store)
    foreign = copy.deepcopy(root)
    foreign["attributes"] = {"something": "else"}
    with pytest.raises(StoreFormatError, match=r"s\.zarr: not an rxrx2-zarr store"):
        RootAttributes.from_json(foreign, "s.zarr")
    with pytest.raises(StoreFormatError, match="not a Zarr v3 group"):
        RootAttributes.from_json({"zarr_format": 3, "node_type": "array"}, "s.zarr")
    future = _changed(root, "layout_version", 99)
    with pytest.raises(StoreFormatError, match="layout version 99 is not one this version"):
        RootAttributes.from_json(future, "s.zarr")
    assert RootAttributes.from_json(root, "s.zarr", layouts=None).layout_version == LAYOUT_VERSION


def test_incomplete_store_is_named(store: Path) -> None:
    attrs = RootAttributes.from_json(_changed(document(store), "complete", False), "s.zarr")
    with pytest.raises(StoreFormatError, match=r"s\.zarr: the store is incomplete.*--resume"):
        attrs.check_complete("s.zarr")
    RootAttributes.from_json(document(store), "s.zarr").check_complete("s.zarr")


def test_site_markers_need_every_checksum(store: Path) -> None:
    """A site document is the site's completion marker only with all three checksums, each a uint32."""
    site = next(p for p in store.rglob("zarr.json") if len(p.parent.relative_to(store).parts) == 5)
    attrs = json.loads(site.read_text())["attributes"]["rxrx2"]
    assert SiteAttributes.parse(attrs, "site").checksums is not None
    assert SiteAttributes.parse({**attrs, "thumbnail_checksum": None}, "site").checksums is None
    with pytest.raises(StoreFormatError, match="site: checksum"):
        SiteAttributes.parse({**attrs, "checksum": 2**32}, "site")
