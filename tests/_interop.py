"""Interoperability checks: does each peer tool read a site of a store of each codec profile, pixels equal to the PNGs?

Every check runs in a fresh Python subprocess (``sys.executable -c PREAMBLE + CODE``) whose imports of
``rxrx2_zarr`` and (for most tools) ``pcodec`` fail, exactly as for a user who installed only the tool: zarr-python
still finds this package's ``rxrx2.vpredict`` entry point (``zarr.codecs`` group) and fails to load it, and numcodecs
finds no ``pcodec``. A check passes when the subprocess exits 0 and the array it saved equals the site's six PNGs
decoded with Pillow; otherwise the outcome carries the exception line of the subprocess's traceback.

Used by ``tests/test_interop.py`` (the expected matrix, asserted) and ``tests/interop_table.py`` (the README table).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
from PIL import Image

from rxrx2_zarr import PROFILES
from rxrx2_zarr._convert import ConvertOptions, convert

#: The codecs of the Zarr v3 core specification (and its crc32c / sharding extensions that every v3 reader has).
CORE_CODECS = frozenset({"bytes", "zstd", "blosc", "crc32c", "gzip", "transpose", "sharding_indexed"})

Kind = Literal["core", "numcodecs", "package"]
#: What a profile's inner codec chain needs, in words (table legend).
KIND_NEEDS: Mapping[Kind, str] = {
    "core": "Zarr v3 core codecs only",
    "numcodecs": "numcodecs codecs (pcodec)",
    "package": "rxrx2-zarr's own codec",
}


def codec_names(profile: str) -> list[str]:
    """The names of a profile's inner-chunk codecs, in chain order."""
    return [str(c["name"]) for c in PROFILES[profile].inner_codecs()]


def profile_kind(profile: str) -> Kind:
    """``core``: only Zarr v3 core codecs; ``numcodecs``: also ``numcodecs.*`` codecs; ``package``: also others
    (this package's ``rxrx2.vpredict``)."""
    extra = set(codec_names(profile)) - CORE_CODECS
    if not extra:
        return "core"
    if all(name.startswith("numcodecs.") for name in extra):
        return "numcodecs"
    return "package"


@dataclass(frozen=True)
class Tool:
    label: str
    blocked: tuple[str, ...]
    code: str


_ALONE = ("rxrx2_zarr", "pcodec")

#: After a tool's ``check(job)``: run every job (one store each) in its own thread, one after the other.
POSTAMBLE = textwrap.dedent(
    """
    for job in ARGS["jobs"]:
        worker = threading.Thread(target=check, args=(job,), name=job["error"])
        worker.start()
        worker.join()
    """
)

#: The preamble of every subprocess: make ``blocked`` modules unimportable and prove it.
PREAMBLE = textwrap.dedent(
    """
    import importlib.abc
    import importlib.metadata
    import json
    import sys
    import threading

    ARGS = json.loads(sys.argv[1])
    BLOCKED = tuple(json.loads(sys.argv[2]))


    def _write(path, kind, error):
        # the exception line, for the parent (stderr may end with asyncio's "Task was destroyed" noise)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        with open(path, "w") as f:
            f.write(f"{name}: {error}")


    def _main_hook(kind, error, tb):
        _write(ARGS["error"], kind, error)
        sys.__excepthook__(kind, error, tb)


    def _thread_hook(hook):
        # each job runs in its own thread: an uncaught exception there is that job's outcome
        _write(hook.thread.name, hook.exc_type, hook.exc_value)
        threading.__excepthook__(hook)


    sys.excepthook = _main_hook
    threading.excepthook = _thread_hook


    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith(BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the interop test)", name=name)
            return None


    sys.meta_path.insert(0, _Blocker())
    # as if not installed: no entry points either (zarr-python finds codecs through the "zarr.codecs" group)
    _entry_points = importlib.metadata.entry_points


    def _visible_entry_points(**params):
        found = _entry_points()
        if isinstance(found, dict):  # Python < 3.12: SelectableGroups, group name -> EntryPoints
            found = [ep for group in found.values() for ep in group]
        kept = importlib.metadata.EntryPoints(ep for ep in found if not ep.module.startswith(BLOCKED))
        return kept.select(**params) if params else kept


    importlib.metadata.entry_points = _visible_entry_points
    for _name in BLOCKED:
        assert not any(m.startswith(_name) for m in sys.modules), f"{_name} imported before the blocker"
        try:
            __import__(_name)
        except ImportError:
            pass
        else:
            raise AssertionError(f"import {_name} succeeded in the isolated subprocess")
        assert not [ep for ep in importlib.metadata.entry_points() if ep.module.startswith(_name)]
    import numpy as np
    """
)

TOOLS: Mapping[str, Tool] = {
    "zarr-python": Tool(
        "zarr-python alone",
        _ALONE,
        """
def check(job):
    import zarr
    np.save(job["out"], zarr.open_array(job["array"], mode="r")[...])
""",
    ),
    "zarr-python+pcodec": Tool(
        "zarr-python + pcodec",
        ("rxrx2_zarr",),
        """
def check(job):
    import zarr
    np.save(job["out"], zarr.open_array(job["array"], mode="r")[...])
""",
    ),
    "tensorstore": Tool(
        "tensorstore",
        _ALONE,
        """
def check(job):
    import tensorstore as ts
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": job["array"]}}).result()
    np.save(job["out"], t.read().result())
""",
    ),
    "ngff-zarr": Tool(
        "ngff-zarr",
        _ALONE,
        """
def check(job):
    import ngff_zarr
    multiscales = ngff_zarr.from_ngff_zarr(job["image"])
    np.save(job["out"], np.asarray(multiscales.images[0].data))
""",
    ),
    "ome-zarr-image": Tool(
        "ome-zarr-py (image)",
        _ALONE,
        """
def check(job):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    nodes = list(Reader(parse_url(job["image"]))())
    np.save(job["out"], np.asarray(nodes[0].data[0]))
""",
    ),
    "ome-zarr-plate": Tool(
        "ome-zarr-py (plate)",
        _ALONE,
        """
def check(job):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    nodes = list(Reader(parse_url(job["plate"]))())
    plate = nodes[0].data[0]  # the full-resolution level: the first field of every well, stitched on the plate grid
    rows, columns = job["grid"]
    h, w = plate.shape[-2] // rows, plate.shape[-1] // columns
    r, c = job["cell"]
    np.save(job["out"], np.asarray(plate[..., r * h:(r + 1) * h, c * w:(c + 1) * w]))
""",
    ),
}

#: The expected outcome, by what a profile's codec chain needs: True = the tool reads the site's pixels, equal to
#: the PNGs; False = it must fail (raise, or return other pixels). A store of core codecs only must open in every
#: tool; pcodec needs zarr-python + numcodecs + pcodec; this package's codec needs this package.
EXPECTED: Mapping[Kind, Mapping[str, bool]] = {
    "core": dict.fromkeys(TOOLS, True),
    "numcodecs": {**dict.fromkeys(TOOLS, False), "zarr-python+pcodec": True},
    "package": dict.fromkeys(TOOLS, False),
}


@dataclass(frozen=True)
class Site:
    """One site of a converted store, and everything a check needs to find it."""

    store: Path
    image: str  # the NGFF image group of the site, relative to the store
    plate: str
    grid: tuple[int, int]  # rows x columns of the plate
    cell: tuple[int, int]  # (row, column) of the site's well on the plate grid
    source: Path
    png_stem: str  # images/<experiment>/Plate<p>/<well>_s<site>

    @property
    def array(self) -> str:
        return f"{self.image}/0"


@dataclass(frozen=True)
class Outcome:
    tool: str
    profile: str
    opened: bool
    error: str | None = None

    @property
    def brief(self) -> str | None:
        """The error without tensorstore's echo of the whole spec and without this machine's paths."""
        if self.error is None:
            return None
        text = re.sub(r"\s*\[tensorstore_spec=.*\]$", "", self.error)
        return re.sub(r'"?/\S*?\.zarr/', '"<store>/', text)

    @property
    def short(self) -> str:
        """For a table cell: ``yes`` or ``no`` with the exception's type."""
        if self.opened:
            return "yes"
        assert self.error is not None
        kind = self.error.split(":", 1)[0].rsplit(".", 1)[-1]
        return f"no (`{kind}`)" if re.fullmatch(r"\w+", kind) else "no"


def png_pixels(source: Path, png_stem: str) -> npt.NDArray[np.uint8]:
    """A site's (6, H, W) pixels, decoded from its six PNGs with Pillow."""
    channels = []
    for channel in range(1, 7):
        with Image.open(source / f"{png_stem}_w{channel}.png") as image:
            channels.append(np.asarray(image, dtype=np.uint8))
    return np.stack(channels)


def convert_profile(source: Path, out: Path, profile: str, inner_chunks: tuple[int, int] = (32, 32)) -> Path:
    """Convert the first plate of ``source`` with ``profile`` into ``out``."""
    options = ConvertOptions(
        profile=profile, inner_chunks=inner_chunks, experiments=("HUVEC-1",), plates=(1,), workers=1, progress=False
    )
    convert(str(source), str(out), options)
    return out


def first_site(store: Path, source: Path, plate: str = "HUVEC-1/Plate1") -> Site:
    """The first field of the plate's first well: the one site that ome-zarr-py's plate view shows for that well."""
    plate_attrs: Any = zarr.open_group(str(store / plate), mode="r").attrs.asdict()
    ome = plate_attrs["ome"]["plate"]
    well = sorted(w["path"] for w in ome["wells"])[0]
    row, column = well.split("/")
    well_attrs: Any = zarr.open_group(str(store / plate / well), mode="r").attrs.asdict()
    field = well_attrs["ome"]["well"]["images"][0]["path"]
    rows = [r["name"] for r in ome["rows"]]
    columns = [c["name"] for c in ome["columns"]]
    return Site(
        store=store,
        image=f"{plate}/{well}/{field}",
        plate=plate,
        grid=(len(rows), len(columns)),
        cell=(rows.index(row), columns.index(column)),
        source=source,
        png_stem=f"images/{plate}/{row}{column}_s{field}",
    )


class HarnessError(RuntimeError):
    """The isolated subprocess itself failed (not a tool's read): no outcome can be trusted."""


def run_tool(tool: str, sites: Mapping[str, Site], workdir: Path, timeout: float = 300) -> dict[str, Outcome]:
    """Run one tool on one site per profile, in one isolated subprocess (each read in its own thread, so a
    failure is that profile's outcome); compare what it read with the PNGs. Raises ``HarnessError`` when the
    subprocess itself fails (for example, when the blocked modules turn out importable)."""
    spec = TOOLS[tool]
    outs = {profile: workdir / f"{tool}-{profile}.npy" for profile in sites}
    for out in outs.values():
        out.unlink(missing_ok=True)
        out.with_suffix(".error").unlink(missing_ok=True)
    jobs = [
        {
            "array": str(site.store / site.array),
            "image": str(site.store / site.image),
            "plate": str(site.store / site.plate),
            "grid": list(site.grid),
            "cell": list(site.cell),
            "out": str(outs[profile]),
            "error": str(outs[profile].with_suffix(".error")),
        }
        for profile, site in sites.items()
    ]
    harness_error = workdir / f"{tool}.error"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PREAMBLE + spec.code + POSTAMBLE,
            json.dumps({"jobs": jobs, "error": str(harness_error)}),
            json.dumps(list(spec.blocked)),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        detail = harness_error.read_text() if harness_error.exists() else result.stderr[-2000:]
        raise HarnessError(f"{tool} subprocess exited {result.returncode}: {detail}")
    return {profile: _outcome(tool, profile, site, outs[profile]) for profile, site in sites.items()}


def _outcome(tool: str, profile: str, site: Site, out: Path) -> Outcome:
    error = out.with_suffix(".error")
    if error.exists():
        return Outcome(tool, profile, False, error.read_text())
    if not out.exists():
        return Outcome(tool, profile, False, "no output and no exception")
    got = np.load(out)
    want = png_pixels(site.source, site.png_stem)
    if got.shape != want.shape:
        return Outcome(tool, profile, False, f"wrong shape {got.shape}, expected {want.shape}")
    if not np.array_equal(got, want):
        return Outcome(tool, profile, False, f"wrong pixels: {int((got != want).sum())} of {want.size} differ")
    return Outcome(tool, profile, True)


def markdown_table(outcomes: Iterable[Outcome]) -> str:
    """The README table: one row per profile, one column per tool."""
    by_key = {(o.profile, o.tool): o for o in outcomes}
    profiles = [p for p in PROFILES if any((p, t) in by_key for t in TOOLS)]
    lines = [
        "| profile | inner codecs | " + " | ".join(TOOLS[t].label for t in TOOLS) + " |",
        "|---|---|" + "---|" * len(TOOLS),
    ]
    for profile in profiles:
        cells = [by_key[(profile, t)].short if (profile, t) in by_key else "" for t in TOOLS]
        codecs = " + ".join(n for n in codec_names(profile) if n != "bytes")
        lines.append(f"| `{profile}` | {codecs} | " + " | ".join(cells) + " |")
    failures = sorted((o for o in by_key.values() if not o.opened), key=lambda o: (o.profile, o.tool))
    if failures:
        lines.append("")
        lines.extend(f"- `{o.profile}` in {TOOLS[o.tool].label}: `{o.brief}`" for o in failures)
    return "\n".join(lines)


def collect(source: Path, profiles: Iterable[str], workdir: Path) -> list[Outcome]:
    """Convert ``source`` with each profile under ``workdir`` and run every tool on each store."""
    sites = {p: first_site(convert_profile(source, workdir / f"{p}.zarr", p), source) for p in profiles}
    return [outcome for tool in TOOLS for outcome in run_tool(tool, sites, workdir).values()]


def main() -> None:
    from rxrx2_zarr import synth

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "rxrx2"
        synth(str(source), experiments=1, plates=1, wells=2, sites=2, size=96, embedding_dim=4, seed=3)
        print(markdown_table(collect(source, PROFILES, Path(tmp))))
