"""The ``rxrx2-zarr`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ._console import available_cpus, configure_logging, show_progress, write_report
from ._errors import RxRx2ZarrError
from ._layout import DEFAULT_INNER_CHUNKS, DEFAULT_PROFILE, MIN_INNER_CHUNK, PROFILES

F = TypeVar("F", bound=Callable[..., Any])


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs to a dict; values are JSON when they parse (``true``, ``3``), else strings; a dotted key
    nests (``client_kwargs.region_name=us-east-1``)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--storage-option")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = options
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


def _merge(common: dict[str, Any], specific: dict[str, Any]) -> dict[str, Any]:
    merged = dict(common)
    for key, value in specific.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _chunks(value: str) -> tuple[int, int]:
    try:
        y, x = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected Y,X (e.g. 256,256), got {value!r}", param_hint="--inner-chunks") from None
    if y < MIN_INNER_CHUNK or x < MIN_INNER_CHUNK:
        raise click.BadParameter(
            f"{value!r}: each edge must be at least {MIN_INNER_CHUNK} (smaller chunks make a site thousands of "
            "objects to encode and index)",
            param_hint="--inner-chunks",
        )
    return y, x


def _plate_numbers(value: str | None) -> tuple[int, ...] | None:
    """``--plates 1,2`` -> ``(1, 2)``; a usage error naming the bad value otherwise."""
    numbers = []
    for text in _csv(value) or ():
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise click.BadParameter(
                f"{text!r} is not a plate number (expected comma-separated positive integers, e.g. 1,2)",
                param_hint="--plates",
            )
        numbers.append(int(text))
    return tuple(numbers) or None


def _side(common: Sequence[str], specific: Sequence[str]) -> dict[str, Any]:
    """The storage options of one side (SRC or DST): the command's common ones, overridden by the side's own."""
    return _merge(parse_storage_options(common), parse_storage_options(specific))


class _CpuDefault(click.Option):
    """An option whose default is the CPUs this process may use, shown in ``--help`` as the number it is now
    (``show_default`` would print "(dynamic)" for a computed default)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        names, text = record
        return names, f"{text}  [default: {available_cpus()}, the CPUs this process may use]"


def workers_flag(help_text: str) -> Callable[[F], F]:
    """``--workers``, the same default on every command: the CPUs this process may use."""
    return click.option("--workers", cls=_CpuDefault, type=click.IntRange(min=1), default=available_cpus,
                        help=help_text)


def output_flags(*, report: bool = True, progress: bool = True) -> Callable[[F], F]:
    """``-v``/``-q`` (configure logging before the command runs), and ``--json`` and ``--progress/--no-progress``
    where the command has a report or progress bars; the command gets ``progress`` already decided."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, verbose: int, quiet: bool, **kwargs: Any) -> Any:
            configure_logging(verbose, quiet)
            if progress:
                kwargs["progress"] = show_progress(kwargs["progress"], quiet)
            return function(*args, **kwargs)

        options = [
            click.option("-v", "--verbose", count=True,
                         help="More messages on stderr: -v what the run decided and found, -vv debugging detail."),
            click.option("-q", "--quiet", is_flag=True,
                         help="Only errors on stderr, and no progress bar unless --progress."),
        ]
        if progress:
            options.append(click.option("--progress/--no-progress", default=None,
                                        help="Draw progress bars on stderr; default: only when stderr is a terminal."))
        if report:
            options.append(click.option("--json", "as_json", is_flag=True,
                                        help="Write the report as one JSON document on stdout, and nothing else."))
        decorated: Any = run
        for option in reversed(options):
            decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate


def source_file_flags(function: F) -> F:
    """``--metadata`` and ``--embeddings``: RxRx2 publishes them apart from the images."""
    function = click.option(
        "--embeddings", default=None, metavar="PATH_OR_URL",
        help="embeddings.csv when not in SRC: a path, URL, zip member (zip://rxrx2/embeddings.csv::x.zip) or an "
             "archive or folder holding it.")(function)
    function = click.option(
        "--metadata", default=None, metavar="PATH_OR_URL",
        help="metadata.csv when not in SRC: a path, URL, zip member (zip://rxrx2/metadata.csv::x.zip) or an "
             "archive or folder holding it.")(function)
    return function


def storage_option_flags(function: F) -> F:
    """``--storage-option``: fsspec options for every URL of the command."""
    function = click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                            help="fsspec storage option for every URL of the command (repeatable).")(function)
    return function


def two_store_flags(function: F) -> F:
    """The storage options of a command that reads SRC and writes or checks DST."""
    for option in reversed(
        [
            storage_option_flags,
            click.option("--src-storage-option", multiple=True, metavar="KEY=VALUE", help="Storage option for SRC only."),
            click.option("--dst-storage-option", multiple=True, metavar="KEY=VALUE", help="Storage option for DST only."),
        ]
    ):
        function = option(function)
    return function


def writer_flags(function: F) -> F:
    """The options of every command that writes a store (``convert``, ``transcode``): how it runs and where."""
    for option in reversed(
        [
            click.option("--overwrite", is_flag=True, help="Replace an existing destination."),
            click.option("--resume", is_flag=True, help="Continue an interrupted run into DST."),
            click.option("--break-lock", is_flag=True, help="Take over a lock held by a converter that is gone."),
            workers_flag("Parallel workers (threads, or processes with --processes)."),
            click.option("--processes", is_flag=True, help="Run on a local Dask cluster of --workers processes."),
            click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run on an existing Dask cluster."),
            two_store_flags,
        ]
    ):
        function = option(function)
    return function


def _run(action: Callable[[], Any]) -> Any:
    """Turn the library's errors into a one-line message and a non-zero exit, not a traceback."""
    try:
        return action()
    except RxRx2ZarrError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ValueError as exc:  # invalid option values rejected by the library's validated dataclasses
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # unreadable paths, network and permission failures of the storage layer
        click.echo(f"error: {exc.__class__.__name__}: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rxrx2-zarr", help="Show the version and exit.")
def main() -> None:
    """Convert RxRx2 (PNG tree) to one OME-NGFF 0.5 HCS Zarr v3 store and read it back lazily."""


@main.command()
@click.argument("out")
@click.option("--experiments", default=2, show_default=True, help="Number of experiments (HUVEC-1, HUVEC-2, ...).")
@click.option("--plates", default=2, show_default=True, help="Plates per experiment.")
@click.option("--wells", default=3, show_default=True, help="Wells per plate (1..1380).")
@click.option("--sites", default=4, show_default=True, help="Sites per well (1..4).")
@click.option("--size", default=1024, show_default=True, help="Image edge in pixels.")
@click.option("--embedding-dim", default=128, show_default=True, help="Embedding columns.")
@click.option("--seed", default=0, show_default=True, help="Seed of every random draw (same seed, same bytes).")
@workers_flag("Processes rendering sites in parallel (the files do not depend on it).")
@click.option("--from-metadata", type=str, default=None, help="Render the rows of this metadata CSV instead.")
@click.option("--limit", type=int, default=None, help="With --from-metadata: its first N rows.")
@click.option("--metadata-only", is_flag=True, help="Write the CSVs only, no images (full-scale layout tests).")
@output_flags()
def synth(out: str, experiments: int, plates: int, wells: int, sites: int, size: int, embedding_dim: int, seed: int,
          workers: int, from_metadata: str | None, limit: int | None, metadata_only: bool, progress: bool,
          as_json: bool) -> None:
    """Write a source tree shaped exactly like RxRx2 (PNGs, metadata.csv, embeddings.csv) to OUT."""
    from .testing import synth as run

    report = _run(lambda: run(out, experiments=experiments, plates=plates, wells=wells, sites=sites, size=size,
                              embedding_dim=embedding_dim, seed=seed, workers=workers, from_metadata=from_metadata,
                              limit=limit, metadata_only=metadata_only, progress=progress))
    write_report(report, as_json)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=DEFAULT_PROFILE, show_default=True,
              help="Codec profile (all lossless).")
@click.option("--inner-chunks", default=None,
              help="Inner chunk shape Y,X inside each site's shard (partial reads); default: the profile's own "
                   f"({','.join(map(str, DEFAULT_INNER_CHUNKS))} for {DEFAULT_PROFILE}).")
@click.option("--level", type=int, default=None, help="Compression level; default: the profile's own.")
@click.option("--pixel-size", type=float, default=None, help="Pixel size in micrometres (unknown for RxRx2).")
@click.option("--experiments", default=None, help="Comma-separated experiments to convert.")
@click.option("--plates", default=None, help="Comma-separated plate numbers to convert.")
@click.option("--limit", type=int, default=None, help="Convert only the first N sites (store order).")
@click.option("--no-pixels", is_flag=True, help="Write tree, attributes, index and embeddings, but no pixels.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="On a bad site: stop, or skip it and list it in the report and the store.")
@writer_flags
@source_file_flags
@click.option("--dry-run", is_flag=True,
              help="Check the source and time a few sites: cost per site and CPU-hours (this run, the whole release).")
@output_flags()
def convert(src: str, dst: str, profile: str, inner_chunks: str | None, level: int | None, pixel_size: float | None,
            experiments: str | None, plates: str | None, limit: int | None, no_pixels: bool, on_error: str,
            overwrite: bool, resume: bool, break_lock: bool, workers: int, processes: bool, scheduler: str | None,
            storage_option: Sequence[str], src_storage_option: Sequence[str], dst_storage_option: Sequence[str],
            dry_run: bool, progress: bool, as_json: bool, metadata: str | None, embeddings: str | None) -> None:
    """Convert the RxRx2 tree SRC into the Zarr store DST (paths or fsspec URLs).

    SRC may be a directory, a zip archive (a .zip path, https://host/x.zip) or any fsspec URL, chained ones too
    (zip::https://host/x.zip, zip://rxrx2::s3://bucket/x.zip, https://host/rxrx2/): archives are read in place.
    Exit status 3: the store is complete but some sites were skipped (--on-error skip)."""
    from ._convert import ConvertOptions
    from ._convert import convert as run
    from ._estimate import estimate

    plate_numbers = _plate_numbers(plates)  # usage errors before anything runs
    chunks = _chunks(inner_chunks) if inner_chunks else None

    def build() -> Any:
        options = ConvertOptions(
            profile=profile, inner_chunks=chunks, level=level, pixel_size=pixel_size,
            experiments=_csv(experiments), plates=plate_numbers,
            limit=limit, no_pixels=no_pixels, on_error=on_error,  # type: ignore[arg-type]
            overwrite=overwrite, resume=resume, break_lock=break_lock, workers=workers, processes=processes,
            scheduler=scheduler, progress=progress,
            src_storage_options=_side(storage_option, src_storage_option),
            dst_storage_options=_side(storage_option, dst_storage_option),
            metadata=metadata, embeddings=embeddings,
        )
        return estimate(src, options) if dry_run else run(src, dst, options)

    report = _run(build)
    write_report(report, as_json)
    if getattr(report, "skipped", None):
        sys.exit(3)  # the store is complete but lacks sites: scripts must notice


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=DEFAULT_PROFILE, show_default=True,
              help="Codec profile of the new store.")
@click.option("--inner-chunks", default=None, help="Inner chunk shape Y,X; default: the profile's own.")
@click.option("--level", type=int, default=None, help="Compression level; default: the profile's own.")
@writer_flags
@output_flags()
def transcode(src: str, dst: str, profile: str, inner_chunks: str | None, level: int | None, overwrite: bool,
              resume: bool, break_lock: bool, workers: int, processes: bool, scheduler: str | None,
              storage_option: Sequence[str], src_storage_option: Sequence[str], dst_storage_option: Sequence[str],
              progress: bool, as_json: bool) -> None:
    """Rewrite the store SRC as a new store DST with another codec profile (no PNGs needed); older layouts too.
    Check the result with `rxrx2-zarr verify SRC DST`. Exit status 3: some sites were skipped."""
    from ._convert import ConvertOptions
    from ._transcode import transcode as run

    def build() -> Any:
        options = ConvertOptions(
            profile=profile, inner_chunks=_chunks(inner_chunks) if inner_chunks else None, level=level,
            overwrite=overwrite, resume=resume, break_lock=break_lock, workers=workers, processes=processes,
            scheduler=scheduler, progress=progress,
            src_storage_options=_side(storage_option, src_storage_option),
            dst_storage_options=_side(storage_option, dst_storage_option),
        )
        return run(src, dst, options)

    report = _run(build)
    write_report(report, as_json)
    if report.skipped:
        sys.exit(3)


@main.command()
@click.argument("src")
@click.argument("dst")
@click.option("--sample", type=int, default=None, help="Compare the pixels of N random sites instead of all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --sample draw.")
@workers_flag("Threads decoding and comparing sites in parallel.")
@source_file_flags
@two_store_flags
@output_flags()
def verify(src: str, dst: str, sample: int | None, seed: int, workers: int, storage_option: Sequence[str],
           src_storage_option: Sequence[str], dst_storage_option: Sequence[str], progress: bool, as_json: bool,
           metadata: str | None, embeddings: str | None) -> None:
    """Check DST against SRC (the RxRx2 tree, or the store DST was transcoded from): every pixel, thumbnail and
    checksum, NGFF metadata, index and embeddings. Exit status 1: problems were found (listed in the report)."""
    from ._verify import verify as run

    src_options = _side(storage_option, src_storage_option)
    dst_options = _side(storage_option, dst_storage_option)
    report = _run(lambda: run(src, dst, sample=sample, seed=seed, workers=workers, storage_options=dst_options,
                              src_storage_options=src_options, progress=progress, metadata=metadata,
                              embeddings=embeddings))
    write_report(report, as_json)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("dst")
@storage_option_flags
@output_flags(progress=False)
def info(dst: str, storage_option: Sequence[str], as_json: bool) -> None:
    """Counts per experiment and plate, bytes and objects on disk, compression against the source."""
    from ._info import info as run

    write_report(_run(lambda: run(dst, storage_options=parse_storage_options(storage_option))), as_json)


@main.command()
@click.argument("dst")
@click.argument("site_ids", nargs=-1)
@click.option("-o", "--out", required=True, help="Output PNG path.")
@click.option("--treatment", default=None, help="Select sites by treatment (e.g. IL-26, EMPTY).")
@click.option("--experiment", default=None, help="Select sites of this experiment (e.g. HUVEC-1).")
@click.option("--plate", type=int, default=None, help="Select sites of this plate number.")
@click.option("--well", default=None, help="Select sites of this well (e.g. B02).")
@click.option("--max", "max_sites", default=16, show_default=True, help="At most this many tiles.")
@storage_option_flags
@output_flags(report=False, progress=False)
def show(dst: str, site_ids: Sequence[str], out: str, treatment: str | None, experiment: str | None,
         plate: int | None, well: str | None, max_sites: int, storage_option: Sequence[str]) -> None:
    """Render sites (by id or by selection) as a labelled RGB montage PNG, with Recursion's channel colours."""
    from ._render import show as run

    select = {k: v for k, v in {"treatment": treatment, "experiment": experiment, "plate": plate, "well": well}.items()
              if v is not None}
    if not site_ids and not select:
        raise click.UsageError("give SITE_IDs or a selection (--treatment, --experiment, --plate, --well)")
    path = _run(lambda: run(dst, list(site_ids), out=out, select=select or None, max_sites=max_sites,
                            storage_options=parse_storage_options(storage_option)))
    click.echo(f"wrote {path}")


@main.command()
@click.argument("workdir", required=False)
@click.option("--size", default=1024, show_default=True, help="Image edge in pixels.")
@click.option("--wells", default=4, show_default=True, help="Wells per plate (1 experiment x 2 plates).")
@workers_flag("Processes generating and threads converting and verifying.")
@output_flags(report=False)
def demo(workdir: str | None, size: int, wells: int, workers: int, progress: bool) -> None:
    """Generate a small RxRx2-shaped dataset, convert it, verify it and compare read speed with the PNGs."""
    from .testing import demo as run

    _run(lambda: run(workdir, size=size, wells=wells, workers=workers, echo=click.echo, progress=progress))


if __name__ == "__main__":  # pragma: no cover
    main()
