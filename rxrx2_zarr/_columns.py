"""The columns of RxRx2's ``metadata.csv``: names only, so the reader and the layout need not import pandas
(:mod:`._schema`, which parses and validates the CSV, re-exports them)."""

from __future__ import annotations

__all__ = ["INTEGER_COLUMNS", "METADATA_COLUMNS", "STRING_COLUMNS"]

#: The nine columns of RxRx2's ``metadata.csv``, in the published order.
METADATA_COLUMNS: tuple[str, ...] = (
    "site_id",
    "well_id",
    "cell_type",
    "experiment",
    "plate",
    "well",
    "site",
    "treatment",
    "treatment_conc",
)
STRING_COLUMNS = ("site_id", "well_id", "cell_type", "experiment", "well", "treatment")
INTEGER_COLUMNS = ("plate", "site")
