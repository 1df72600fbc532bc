"""The JSON documents of the report dataclasses (``--json`` on the command line, ``Report.to_json()``).

A report's document holds its dataclass fields under their own names, plus the few derived figures the report
names; values become what JSON can hold: tuples and sets lists, nested dataclasses objects, numpy scalars
numbers, data frames lists of row objects, and NaN or infinite floats ``null`` (standard JSON has no NaN).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["jsonable", "report_json"]


def report_json(report: Any, **derived: Any) -> dict[str, Any]:
    """``report``'s fields (a dataclass instance) and ``derived``, as JSON-ready values."""
    if not dataclasses.is_dataclass(report) or isinstance(report, type):
        raise TypeError(f"expected a report dataclass instance, got {type(report).__name__}")
    document = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    document.update(derived)
    return {key: jsonable(value) for key, value in document.items()}


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (see the module's description); anything else is a ``TypeError``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [jsonable(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame (pandas not imported here)
        return [jsonable(row) for row in value.to_dict(orient="records")]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist())
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")
