"""The command line's conventions: help on every option, one ``--workers`` default, ``--json`` reports alone on
stdout, progress bars only on terminals, log messages on stderr at the level ``-v``/``-q`` choose, counts and
problem lists printed one way. Real trees, stores and processes throughout."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import click
import imagecodecs
import pytest
from click.testing import CliRunner

from rxrx2_zarr import (
    ConvertOptions,
    ConvertReport,
    InfoReport,
    SynthReport,
    VerifyReport,
    convert,
    synth,
    verify,
)
from rxrx2_zarr._estimate import ConversionEstimate
from rxrx2_zarr._paths import parse_site_id
from rxrx2_zarr._plan import Skip
from rxrx2_zarr._text import count, problem_lines
from rxrx2_zarr.cli import main

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # zarr: numcodecs codecs are not core v3 codecs
    pytest.mark.filterwarnings("ignore::Warning:pydantic"),
]

SIZE = 64
FLAGS = ["--inner-chunks", "32,32", "--profile", "fast"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 experiment x 1 plate x 2 wells x up to 2 sites of 64 x 64 images."""
    out = tmp_path_factory.mktemp("cli") / "rxrx2"
    synth(str(out), experiments=1, plates=1, wells=2, sites=2, size=SIZE, embedding_dim=4, seed=5)
    return out


@pytest.fixture(scope="module")
def store(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-store") / "rxrx2.zarr"
    convert(str(tree), str(out), ConvertOptions(inner_chunks=(32, 32), profile="fast"))
    return out


def _commands(group: click.Group) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield name, command
        if isinstance(command, click.Group):
            yield from ((f"{name} {sub}", c) for sub, c in _commands(command))


def _cli(*args: str, stderr: int | None = subprocess.PIPE, cpus: set[int] | None = None) -> subprocess.CompletedProcess[str]:
    """``rxrx2-zarr ARGS`` in a new process (optionally pinned to ``cpus``), stdout and stderr apart."""

    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return subprocess.run([sys.executable, "-m", "rxrx2_zarr.cli", *args], stdout=subprocess.PIPE, stderr=stderr,
                          text=True, timeout=600, preexec_fn=pin)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# --- help and defaults ----------------------------------------------------------------------------------------------


def test_every_option_has_help_text() -> None:
    missing = [
        f"rxrx2-zarr {name} {'/'.join(param.opts)}"
        for name, command in [("", main), *_commands(main)]
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert not missing, missing
    assert {name for name, _ in _commands(main)} >= {"synth", "convert", "transcode", "verify", "info", "show", "demo"}


def test_workers_default_is_the_cpus_this_process_may_use() -> None:
    with_workers = [(n, c) for n, c in _commands(main) if any(p.name == "workers" for p in c.params)]
    assert {n for n, _ in with_workers} == {"synth", "convert", "transcode", "verify", "demo"}
    cpus = len(os.sched_getaffinity(0))
    for name, command in with_workers:
        (param,) = (p for p in command.params if p.name == "workers")
        assert param.get_default(click.Context(command)) == cpus, name
    # --help of each, in a process allowed one CPU (as taskset or a batch scheduler would allow)
    script = (
        "import json, os, sys\n"
        "from click.testing import CliRunner\n"
        "from rxrx2_zarr.cli import main\n"
        f"os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}})\n"
        "print(json.dumps({n: CliRunner().invoke(main, [n, '--help']).output for n in sys.argv[1:]}))\n"
    )
    names = [n for n, _ in with_workers]
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, check=True)
    for name, text in json.loads(done.stdout).items():
        flat = " ".join(text.split())  # click wraps the help to the terminal's width
        assert "[default: 1, the CPUs this process may use]" in flat, (name, text)


def test_convert_runs_on_as_many_threads_as_cpus_by_default(tree: Path, tmp_path: Path) -> None:
    one = min(os.sched_getaffinity(0))
    done = _cli("convert", str(tree), str(tmp_path / "one.zarr"), *FLAGS, "--json", cpus={one})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["execution"] == "1 thread(s)"
    every = _cli("convert", str(tree), str(tmp_path / "all.zarr"), *FLAGS, "--json")
    assert json.loads(every.stdout)["execution"] == f"{len(os.sched_getaffinity(0))} thread(s)"


# --- --json -----------------------------------------------------------------------------------------------------------


def test_json_reports_hold_the_report_fields_and_nothing_else_is_on_stdout(tree: Path, store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cases: list[tuple[list[str], type, set[str], int]] = [
        (["synth", str(tmp_path / "again"), "--experiments", "1", "--plates", "1", "--wells", "1", "--size", "32",
          "--embedding-dim", "2"], SynthReport, set(), 0),
        (["convert", str(tree), str(tmp_path / "a.zarr"), *FLAGS], ConvertReport,
         {"ratio", "sites_per_second", "png_mb_per_second"}, 0),
        (["convert", str(tree), str(tmp_path / "b.zarr"), "--dry-run"], ConversionEstimate,
         {"cpu_hours", "release_cpu_hours"}, 0),
        (["transcode", str(store), str(tmp_path / "t.zarr"), "--profile", "zstd"], ConvertReport,
         {"ratio", "sites_per_second", "png_mb_per_second"}, 0),
        (["verify", str(tree), str(store)], VerifyReport, {"ok"}, 0),
        (["info", str(store)], InfoReport, {"source_png_bytes", "ratio"}, 0),
    ]
    for args, report, derived, code in cases:
        bar = [] if args[0] == "info" else ["--progress"]  # a bar goes to stderr, never to stdout
        result = runner.invoke(main, [*args, "--json", *bar])
        assert result.exit_code == code, (args, result.output)
        document = json.loads(result.stdout)  # the whole of stdout is one document
        assert set(document) == _fields(report) | derived, args
    assert json.loads(runner.invoke(main, ["verify", str(tree), str(store), "--json"]).stdout)["ok"] is True
    plates = json.loads(runner.invoke(main, ["info", str(store), "--json"]).stdout)["per_plate"]
    assert plates == [{"experiment": "HUVEC-1", "plate": 1, "wells": 2, "sites": plates[0]["sites"], "empty_sites": plates[0]["empty_sites"]}]


def _damage_png(path: Path) -> None:
    pixels = imagecodecs.png_decode(path.read_bytes())
    pixels[0, 0] ^= 0xFF
    path.write_bytes(imagecodecs.png_encode(pixels))


def test_json_keeps_the_exit_codes(tree: Path, store: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(tree, changed)
    site_id = (changed / "metadata.csv").read_text().splitlines()[1].split(",")[0]
    _damage_png(changed / parse_site_id(site_id).image_paths()[2])
    failed = _cli("verify", str(changed), str(store), "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["ok"] is False and any(site_id in p and "pixels differ" in p for p in report["problems"])

    (changed / parse_site_id(site_id).image_paths()[4]).write_bytes(b"not a PNG, and long enough to be read as one")
    skipped = _cli("convert", str(changed), str(tmp_path / "skip.zarr"), *FLAGS, "--on-error", "skip", "--json")
    assert skipped.returncode == 3, skipped.stderr
    assert [s["site_id"] for s in json.loads(skipped.stdout)["skipped"]] == [site_id]
    refused = _cli("convert", str(changed), str(tmp_path / "skip.zarr"), *FLAGS, "--json")
    assert refused.returncode == 2 and refused.stdout == "" and "error:" in refused.stderr


# --- progress bars and logging ----------------------------------------------------------------------------------------


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run ``rxrx2-zarr ARGS`` with stderr on a pseudo-terminal; its exit status and what the terminal showed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has 0 columns
    process = subprocess.Popen([sys.executable, "-m", "rxrx2_zarr.cli", *args], stdout=subprocess.DEVNULL,
                               stderr=follower)
    os.close(follower)  # the child holds the only copy: reading ends when it exits
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child is gone and everything it wrote was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    return process.wait(timeout=600), shown.decode(errors="replace")


def test_progress_bars_only_on_a_terminal_unless_asked(tree: Path, tmp_path: Path) -> None:
    piped = _cli("convert", str(tree), str(tmp_path / "piped.zarr"), *FLAGS)
    assert piped.returncode == 0 and "site/s" not in piped.stderr and "convert:" not in piped.stderr, piped.stderr
    asked = _cli("convert", str(tree), str(tmp_path / "asked.zarr"), *FLAGS, "--progress")
    assert asked.returncode == 0 and "convert:" in asked.stderr, asked.stderr
    code, shown = _on_a_terminal("convert", str(tree), str(tmp_path / "tty.zarr"), *FLAGS)
    assert code == 0 and "convert:" in shown, shown
    code, shown = _on_a_terminal("verify", str(tree), str(tmp_path / "tty.zarr"), "--no-progress")
    assert code == 0 and "verify:" not in shown, shown
    code, shown = _on_a_terminal("verify", str(tree), str(tmp_path / "tty.zarr"), "-q")
    assert code == 0 and "verify:" not in shown, shown


def test_the_python_api_draws_no_progress_bar(tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    convert(str(tree), str(tmp_path / "api.zarr"), inner_chunks=(32, 32))
    assert verify(str(tree), str(tmp_path / "api.zarr")).ok
    synth(str(tmp_path / "api-tree"), experiments=1, plates=1, wells=1, sites=1, size=32, embedding_dim=2)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured


def _with_trailing_bytes(tree: Path, tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "junk"
    shutil.copytree(tree, src)
    site_id = (src / "metadata.csv").read_text().splitlines()[1].split(",")[0]
    victim = src / parse_site_id(site_id).image_paths()[1]
    victim.write_bytes(victim.read_bytes() + b"junk" * 5)
    return src, str(victim.relative_to(src))


def test_library_warnings_go_through_logging(tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, name = _with_trailing_bytes(tree, tmp_path)
    with caplog.at_level(logging.WARNING, logger="rxrx2_zarr"):
        report = convert(str(src), str(tmp_path / "out.zarr"), inner_chunks=(32, 32))
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("rxrx2_zarr.")]
    assert any(name in r.getMessage() and "trailing byte" in r.getMessage() for r in logged), caplog.records
    assert any(name in w for w in report.warnings)  # and the report still lists it


def test_the_cli_sends_log_messages_to_stderr_at_the_chosen_level(tree: Path, tmp_path: Path) -> None:
    src, name = _with_trailing_bytes(tree, tmp_path)
    default = _cli("convert", str(src), str(tmp_path / "a.zarr"), *FLAGS, "--json")
    assert default.returncode == 0
    assert f"warning: {name}" in default.stderr and "info:" not in default.stderr, default.stderr
    json.loads(default.stdout)  # the log line did not land on stdout
    verbose = _cli("convert", str(src), str(tmp_path / "b.zarr"), *FLAGS, "-v")
    assert "info:" in verbose.stderr and "planned" in verbose.stderr, verbose.stderr
    quiet = _cli("convert", str(src), str(tmp_path / "c.zarr"), *FLAGS, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_nothing_is_configured_at_import() -> None:
    script = (
        "import logging, rxrx2_zarr, rxrx2_zarr.cli, rxrx2_zarr._convert, rxrx2_zarr._verify, rxrx2_zarr.testing\n"
        "rxrx2_zarr.synth\n"
        "ours = [logging.getLogger(n) for n in logging.root.manager.loggerDict if n.startswith('rxrx2_zarr')]\n"
        "print(sum(len(l.handlers) for l in ours), len(logging.root.handlers), len(ours))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    handlers, root_handlers, loggers = (int(v) for v in done.stdout.split())
    assert handlers == 0 and root_handlers == 0 and loggers >= 3


# --- counts and problem lists -----------------------------------------------------------------------------------------


def test_counts_are_plural_except_one() -> None:
    assert [count(n, "plate") for n in (0, 1, 2, 1380)] == ["0 plates", "1 plate", "2 plates", "1,380 plates"]
    assert count(1, "index", "indices") == "1 index" and count(3, "index", "indices") == "3 indices"


def test_info_prints_singular_counts(store: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(store)])
    assert result.exit_code == 0, result.output
    assert "2 wells, 1 plate, 1 experiment" in result.output and "plates" not in result.output, result.output
    assert "1 experiments" not in result.output


def test_one_formatter_lists_problems_in_verify_convert_and_info(tree: Path, store: Path) -> None:
    problems = [f"problem {i}" for i in range(25)]
    lines = problem_lines(problems)
    assert lines[:20] == [f"  problem {i}" for i in range(20)] and lines[20:] == ["  ... and 5 more"]
    assert problem_lines(problems[:3], total=1000)[-1] == "  ... and 997 more"
    report = VerifyReport("src", "dst", problems=problems)
    summary = report.summary().splitlines()
    assert summary[0].endswith("FAILED: 25 problems") and summary[-1] == "  - ... and 5 more"
    assert sum(line.startswith("  - problem") for line in summary) == 20
    with pytest.raises(ValueError, match="at least 1"):
        problem_lines(problems, limit=0)

    skips = tuple(Skip(f"HUVEC-1_1_B{c:02d}_1", "not a PNG") for c in range(2, 27))
    converted = ConvertReport("src", "dst", 30, 5, 0, skips, 1, 1, 1.0, 0, 0, (), True, "1 thread(s)")
    text = converted.summary().splitlines()
    assert "skipped 25 sites:" in text and text[-1] == "  ... and 5 more"
    assert sum(line.endswith(": not a PNG") for line in text) == 20

    listed = CliRunner().invoke(main, ["info", str(store)]).output
    assert "skipped at conversion" not in listed  # nothing was skipped in this store


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    """``rxrx2-zarr demo`` (moved into rxrx2_zarr.testing) still generates, converts, verifies and times reads."""
    done = _cli("demo", str(tmp_path / "demo"), "--size", "64", "--wells", "2", "--workers", "1")
    assert done.returncode == 0, done.stderr
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "ms/site", "done: try"):
        assert step in done.stdout, done.stdout
    assert ": OK" in done.stdout and (tmp_path / "demo" / "rxrx2.zarr" / "zarr.json").is_file()
    assert "convert:" not in done.stderr  # stderr is a pipe here: no progress bars
