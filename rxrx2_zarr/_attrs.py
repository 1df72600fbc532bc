"""Typed models of the ``rxrx2`` attributes of every node of a store, shared by the writer and the readers.

The converter builds the documents from these models (``_hierarchy.py``, ``_convert.py``); ``open``, ``verify``
and ``info`` parse them with the same models, so every field is written and read in one place. Validation is
strict (a store is untrusted input: ``"pixels": "yes"`` is not a boolean, ``"5"`` not a number) and errors name the
store and the field. Unknown keys are ignored, so a later minor addition does not make a store unreadable.

Layout 1 root attributes (before the columnar index, the thumbnails and ``readers``) parse too: the fields they lack
have defaults, so ``transcode`` and ``verify`` read them. The NGFF parts of the same documents (``ome``) are built on
ome-zarr-models' models in ``_hierarchy.py``.

pydantic costs about 30 ms to import and these models about 40 ms more to build on first use (measured with
``python -X importtime``): ``open()`` pays it once per process when it parses the root attributes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from ._channels import CHANNEL_SPECS
from ._errors import StoreFormatError
from ._layout import (
    CHECKSUM_ALGORITHM,
    DEFAULT_PROFILE,
    EMBEDDINGS_ARRAY,
    INDEX_COLUMNS,
    INDEX_GROUP,
    INDEX_PARQUET,
    LAYOUT_VERSION,
    LEVEL,
    THUMBNAIL_FACTOR,
    THUMBNAIL_LEVEL,
    SiteArraySpec,
)
from ._root import check_complete, check_layout, rxrx2_root

__all__ = [
    "Counts",
    "EmbeddingsAttributes",
    "ExperimentAttributes",
    "Fingerprint",
    "IndexAttributes",
    "PlateAttributes",
    "RootAttributes",
    "SiteAttributes",
    "SiteChecksums",
    "SiteOptions",
    "SourceAttributes",
    "Subset",
    "ThumbnailAttributes",
    "WellAttributes",
    "rxrx2_root",
]

Uint32 = Annotated[int, Field(ge=0, lt=2**32)]
Count = Annotated[int, Field(ge=0)]
#: The index order, recorded in the root and index attributes.
INDEX_ORDER = ("experiment", "plate", "row", "column", "site")
M = TypeVar("M", bound="Attributes")


class Attributes(BaseModel):
    """Base of every model: frozen, strict, unknown keys ignored; ``to_json`` gives the stored document."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", defer_build=True)
    omit_if_none: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of the document while None (keys that the format adds only when they are known)."""

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.omit_if_none:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def to_json(self) -> dict[str, Any]:
        """The attributes as stored (JSON types only)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data

    @classmethod
    def parse(cls: type[M], data: Any, where: str) -> M:
        """Validate ``data`` (a stored document's ``rxrx2`` attributes); StoreFormatError names ``where`` and the
        fields that are wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}" for error in exc.errors()[:3]
            )
            raise StoreFormatError(f"{where}: {problems}") from None


# --- the root group ------------------------------------------------------------------------------------------------


class Channel(Attributes):
    number: int
    label: str
    rgb: list[int]
    window: list[int]


def _channels() -> list[Channel]:
    return [Channel(number=s.number, label=s.label, rgb=list(s.rgb), window=list(s.window)) for s in CHANNEL_SPECS]


class IndexInfo(Attributes):
    """Where the index is: the ``index/<column>`` arrays and (layout 2) the Parquet object with its CRC32C, known
    once it is written at the end of a conversion."""

    group: str = INDEX_GROUP
    parquet: str | None = None
    """The Parquet object's key (None in layout 1, which has none)."""
    parquet_crc32c: Uint32 | None = None
    first_site_id: str | None = None
    """The site_id of the index's first row (None: an empty store, or one written before it was recorded): a
    reader opens one site array's document with it, to check the codec chain, without parsing the index."""
    columns: list[str] = Field(default_factory=lambda: list(INDEX_COLUMNS))
    order: list[str] = Field(default_factory=lambda: list(INDEX_ORDER))


class Counts(Attributes):
    """What the finished store holds (empty until the conversion finishes)."""

    omit_if_none = frozenset(
        {"sites", "wells", "plates", "experiments", "skipped", "embeddings_missing", "embedding_dim", "height", "width"}
    )
    sites: Count | None = None
    wells: Count | None = None
    plates: Count | None = None
    experiments: Count | None = None
    skipped: Count | None = None
    embeddings_missing: Count | None = None
    embedding_dim: Count | None = None
    height: Count | None = None
    width: Count | None = None


class Subset(Attributes):
    """The selection converted (None: all)."""

    experiments: list[str] | None = None
    plates: list[int] | None = None
    limit: int | None = None


class Found(Attributes):
    """What the source resolution found, relative to SRC (so that the same tree converted from elsewhere records
    the same)."""

    kind: Literal["zip", "directory"]
    images: str
    metadata: str | None
    embeddings: str | None


class SourceAttributes(Attributes):
    """Where the store came from."""

    omit_if_none = frozenset({"found", "png_bytes_read"})
    url: str
    metadata_file: str
    metadata_sha256: str
    png_bytes: Count
    png_files: Count
    subset: Subset = Field(default_factory=Subset)
    found: Found | None = None
    png_bytes_read: bool | None = None
    """True when the source listing had no sizes (HTTP): ``png_bytes`` then counts the bytes read."""


class SiteOptions(Attributes):
    """The output-affecting options (``SiteArraySpec.options()``, plus ``no_pixels``)."""

    height: int
    width: int
    inner_chunks: list[int] | None = None
    profile: str = DEFAULT_PROFILE
    level: int | None = None
    zstd_parameters: dict[str, int] = Field(default_factory=dict)
    pixel_size: float | None = None
    no_pixels: bool = False

    def spec(self) -> SiteArraySpec:
        """The site array specification these options describe (ValueError when they describe none)."""
        return SiteArraySpec.from_options(self.to_json())


class Fingerprint(Attributes):
    """What must match for ``--resume`` to continue a store: same source metadata, options and subset."""

    layout_version: int
    metadata_sha256: str
    options: SiteOptions
    subset: Subset


class Skipped(Attributes):
    site_id: str
    reason: str


class RootAttributes(Attributes):
    """The root group's ``rxrx2`` attributes. ``complete`` turns true only when the conversion finished."""

    omit_if_none = frozenset({"fingerprint"})
    layout_version: int = LAYOUT_VERSION
    format: Literal["rxrx2-zarr"] = "rxrx2-zarr"
    complete: bool = False
    pixels: bool = True
    channels: list[Channel] = Field(default_factory=_channels)
    checksum: str = CHECKSUM_ALGORITHM
    index: IndexInfo = Field(default_factory=IndexInfo)
    levels: dict[str, int] = Field(default_factory=dict)
    """The resolution levels of every site image and their downscale factors (empty in layout 1, which has one)."""
    readers: str = ""
    """Which readers decode the pixels (the profile's ``readers``); empty in layout 1."""
    embeddings: str = EMBEDDINGS_ARRAY
    counts: Counts = Field(default_factory=Counts)
    source: SourceAttributes
    options: SiteOptions
    versions: dict[str, str] = Field(default_factory=dict)
    skipped: list[Skipped] = Field(default_factory=list)
    fingerprint: Fingerprint | None = None

    @classmethod
    def new(
        cls,
        options: SiteOptions,
        source: SourceAttributes,
        fingerprint: Fingerprint,
        *,
        pixels: bool,
        versions: Mapping[str, str],
        readers: str,
    ) -> RootAttributes:
        """The root attributes a conversion starts with (the current layout; ``complete`` false)."""
        return cls(
            index=IndexInfo(parquet=INDEX_PARQUET),
            levels={LEVEL: 1, THUMBNAIL_LEVEL: THUMBNAIL_FACTOR},
            options=options,
            source=source,
            fingerprint=fingerprint,
            pixels=pixels,
            versions=dict(versions),
            readers=readers,
        )

    @classmethod
    def from_json(
        cls, doc: Any, store: str = "store", *, layouts: Collection[int] | None = (LAYOUT_VERSION,)
    ) -> RootAttributes:
        """The root attributes of the root ``zarr.json`` document ``doc`` of ``store`` (named in errors).

        StoreFormatError when the document is not an rxrx2-zarr root, when its layout version is not in ``layouts``
        (None: any; an older layout's message names ``transcode``), or when a field is wrong (the message names it).
        """
        attrs = rxrx2_root(doc, store)
        check_layout(attrs.get("layout_version"), store, layouts)
        return cls.parse(attrs, f"{store}: root attributes")

    def check_complete(self, store: str) -> None:
        """StoreFormatError unless the conversion finished (an incomplete store has no index yet)."""
        check_complete(self.complete, store)


# --- groups below the root -----------------------------------------------------------------------------------------


class ExperimentCounts(Attributes):
    plates: Count
    wells: Count
    sites: Count


class ExperimentAttributes(Attributes):
    experiment: str
    cell_type: str
    plates: list[int]
    counts: ExperimentCounts


class PlateCounts(Attributes):
    wells: Count
    sites: Count
    empty_wells: Count
    treatments: Count


class PlateAttributes(Attributes):
    experiment: str
    plate: int
    counts: PlateCounts


class WellAttributes(Attributes):
    well_id: str
    well: str
    treatment: str
    treatment_conc: float | None
    """None for a blank concentration (EMPTY wells), as in metadata.csv."""
    sites: Count


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
    def from_json(cls, attrs: Any) -> SiteChecksums | None:
        """The checksums in a site document's ``rxrx2`` attributes, or None if any is missing or not a uint32."""
        try:
            site = SiteAttributes.model_validate(attrs)
        except ValidationError:
            return None
        return site.checksums


class SiteAttributes(Attributes):
    """A site's image group. The checksums are None until the site is written: this document, written after the
    site's objects, is its completion marker."""

    site_id: str
    site: int
    checksum: Uint32 | None = None
    shard_checksum: Uint32 | None = None
    thumbnail_checksum: Uint32 | None = None

    @classmethod
    def of(cls, site_id: str, site: int, checksums: SiteChecksums | None) -> SiteAttributes:
        sums = checksums.to_json() if checksums is not None else {}
        return cls(site_id=site_id, site=site, **sums)

    @property
    def checksums(self) -> SiteChecksums | None:
        if self.checksum is None or self.shard_checksum is None or self.thumbnail_checksum is None:
            return None
        return SiteChecksums(self.checksum, self.shard_checksum, self.thumbnail_checksum)


# --- arrays ------------------------------------------------------------------------------------------------------


class IndexAttributes(Attributes):
    """The ``index`` group: one 1-D array per column, the same values as the Parquet object."""

    description: str = "one array per index column (dimension 'site'); the same values as index.parquet"
    columns: list[str] = Field(default_factory=lambda: list(INDEX_COLUMNS))
    order: list[str] = Field(default_factory=lambda: list(INDEX_ORDER))
    parquet: str = INDEX_PARQUET
    checksum: str = "crc32c of the C-order uint8 (6, H, W) pixels; 0 when the store has no pixels"
    shard_checksum: str = "the crc32c closing the site's shard index (its last 4 bytes)"
    thumbnail_checksum: str = "the crc32c closing the site's thumbnail chunk (its last 4 bytes)"


class EmbeddingsAttributes(Attributes):
    """The ``embeddings`` array (site, feature), aligned with the index."""

    features: list[str]
    missing_rows: Count
    """Sites without an embedding (NaN rows)."""


class ThumbnailAttributes(Attributes):
    """A site's thumbnail array (level ``1``): each pixel the rounded mean of a ``factor`` x ``factor`` block of
    level ``of``."""

    factor: int = THUMBNAIL_FACTOR
    of: str = LEVEL
