"""Real services for the scale-out tests, all on 127.0.0.1: an S3 endpoint (moto in server mode) and a Dask
cluster (a scheduler and worker processes started with the ``dask`` command line).

Every service is a subprocess in its own session (process group), so stopping it kills the whole group: the
nanny and its worker, never an unrelated process. Readiness is polled with a deadline, never slept on.

This file is also a Dask preload module (``dask worker --preload tests/_services.py``): with
``RXRX2_TEST_SITE_SECONDS`` set in a worker's environment, each site task takes at least that long, so that a test
can kill a worker while tasks are still in flight however fast the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PYTHON = sys.executable
#: Fake credentials: moto accepts anything, and explicit ones keep botocore from looking for real ones (and from
#: asking an instance-metadata endpoint, which is not on loopback).
KEY = "testing"
SECRET = "testing"
SITE_SECONDS_ENV = "RXRX2_TEST_SITE_SECONDS"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a service that then fails to bind it is restarted by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocesses: this checkout importable, fake AWS credentials, no proxy, loopback only."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "NO_PROXY": HOST,
            "no_proxy": HOST,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.05,
               watch: Sequence[Process] = ()) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds or if a watched process
    exits early (with its output, which says why)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in watch:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.returncode} while waiting for {what}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else service_env(), cwd=cwd, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return int(self.popen.wait(timeout))

    def kill(self) -> None:
        """SIGKILL the whole group at once (a worker and its nanny: nothing gets to shut down cleanly)."""
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``grace`` seconds."""
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # the group may outlive its leader (a nanny's worker): always finish it off
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)  # the group id is the leader's pid (start_new_session)


# --- S3: moto in server mode ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request as the server received it (from moto's request recorder)."""

    method: str
    path: str
    """The URL path, ``/bucket/key``."""
    query: str
    range: str | None
    """The ``Range`` header, if any."""


class MotoS3:
    """``moto_server`` on a free loopback port, with helpers to make buckets and to talk to it.

    Its request recorder writes to ``workdir/requests.jsonl`` (never to the caller's working directory); it records
    only between :meth:`record` and :meth:`recorded`, so uploads made to set a test up are not in it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: Process | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}}

    def cli_options(self, flag: str = "--storage-option") -> list[str]:
        """The same options as ``rxrx2-zarr`` flags (dotted keys nest)."""
        return [flag, f"key={KEY}", flag, f"secret={SECRET}", flag, f"client_kwargs.endpoint_url={self.endpoint}",
                flag, "client_kwargs.region_name=us-east-1"]

    def start(self, timeout: float = 60.0) -> MotoS3:
        for attempt in range(3):  # the free port may be taken between choosing and binding it: try another
            self.port = free_port()
            self.proc = Process("moto_server", [PYTHON, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                                self.workdir / f"moto-{attempt}.log",
                                env=service_env({"MOTO_RECORDER_FILEPATH": str(self.workdir / "requests.jsonl")}))
            try:
                wait_until(self._ready, timeout, f"moto_server on {self.endpoint}", interval=0.1, watch=[self.proc])
                return self
            except RuntimeError:
                self.proc.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        # a direct opener: no proxy from the environment may intercept loopback traffic
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.endpoint}/moto-api/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # answering at all is what counts
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _moto_api(self, action: str) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        method = "GET" if action == "download-recording" else "POST"
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method=method)
        with opener.open(request, timeout=30) as response:
            return bytes(response.read())

    def record(self) -> None:
        """Forget what was recorded so far and record every request from now on."""
        self._moto_api("reset-recording")
        self._moto_api("start-recording")

    def recorded(self) -> list[Request]:
        """The requests since :meth:`record`, in arrival order; recording goes on (from an empty log)."""
        entries = [json.loads(line) for line in self._moto_api("download-recording").decode().splitlines() if line]
        self._moto_api("reset-recording")
        requests = []
        for entry in entries:
            url = urllib.parse.urlsplit(entry["url"])
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            requests.append(Request(entry["method"], urllib.parse.unquote(url.path), url.query, headers.get("range")))
        return requests

    def client(self) -> Any:
        """A boto3 client of this server (made once: creating one costs ~0.1 s of CPU, too much to poll with)."""
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                                        aws_secret_access_key=SECRET, region_name="us-east-1")
        return self._client

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def filesystem(self) -> Any:
        """A private s3fs instance (no shared listings cache with the code under test)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.storage_options)

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        """Every object key under ``prefix``, straight from the server (boto3: no fsspec caching at all)."""
        paginator = self.client().get_paginator("list_objects_v2")
        return {o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])}


@contextlib.contextmanager
def moto_s3(workdir: Path) -> Iterator[MotoS3]:
    server = MotoS3(workdir)
    try:
        yield server.start()
    finally:
        server.stop()


# --- Dask: a scheduler and worker processes ------------------------------------------------------------------------


class DaskCluster:
    """``dask scheduler`` and ``dask worker`` processes (one thread each) on 127.0.0.1."""

    def __init__(self, workdir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = service_env(env)
        self.scheduler: Process | None = None
        self.workers: list[Process] = []
        self.address = ""

    def start(self, n_workers: int, *, preload: bool = False, timeout: float = 120.0) -> DaskCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        info = self.workdir / "scheduler.json"
        self.scheduler = Process(
            "dask scheduler",
            [PYTHON, "-m", "distributed.cli.dask_scheduler", "--host", HOST, "--port", "0", "--no-dashboard",
             "--dashboard-address", f"{HOST}:0",
             "--scheduler-file", str(info)],
            self.workdir / "scheduler.log", env=self.env, cwd=self.workdir,
        )
        self.address = wait_until(lambda: _address(info), timeout, "the Dask scheduler", interval=0.1,
                                  watch=[self.scheduler])
        for i in range(n_workers):
            self.add_worker(f"w{i}", preload=preload)
        self.wait_for_workers(n_workers, timeout)
        return self

    def add_worker(self, name: str, *, preload: bool = False) -> Process:
        argv = [PYTHON, "-m", "distributed.cli.dask_worker", self.address, "--name", name, "--host", HOST,
                "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--dashboard-address", f"{HOST}:0",
                "--memory-limit", "0",
                "--local-directory", str(self.workdir / name),
                # a worker whose scheduler is gone exits by itself: no orphans if a test run is killed
                "--death-timeout", "60"]
        if preload:
            argv += ["--preload", str(Path(__file__).resolve())]
        # the workers start in their own directory, not the caller's: paths must be absolute to reach them
        worker = Process(f"dask worker {name}", argv, self.workdir / f"{name}.log", env=self.env, cwd=self.workdir)
        self.workers.append(worker)
        return worker

    def client(self, timeout: float = 60.0) -> Any:
        import distributed

        dist: Any = distributed  # unannotated constructors
        return dist.Client(self.address, timeout=timeout, set_as_default=False)

    def wait_for_workers(self, n: int, timeout: float = 120.0) -> None:
        with self.client() as client:
            wait_until(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) >= n, timeout,
                       f"{n} Dask worker(s)", interval=0.2, watch=[p for p in [self.scheduler, *self.workers] if p])

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.scheduler is not None:
            self.scheduler.stop()

    def logs(self) -> str:
        procs = [p for p in [self.scheduler, *self.workers] if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in procs)


def _address(info: Path) -> str | None:
    try:
        return str(json.loads(info.read_text())["address"])
    except (FileNotFoundError, ValueError, KeyError):
        return None  # not written yet, or half written


@contextlib.contextmanager
def dask_cluster(workdir: Path, n_workers: int, *, preload: bool = False,
                 env: Mapping[str, str] | None = None) -> Iterator[DaskCluster]:
    cluster = DaskCluster(workdir, env=env)
    try:
        yield cluster.start(n_workers, preload=preload)
    finally:
        cluster.stop()


# --- the preload hook ----------------------------------------------------------------------------------------------


def dask_setup(worker: Any) -> None:
    """Called by ``dask worker --preload``: stretch every site task to ``RXRX2_TEST_SITE_SECONDS`` (half before the
    real work, half after), so a worker can be killed both before and after a site's objects are written."""
    seconds = float(os.environ.get(SITE_SECONDS_ENV, "0") or 0)
    if seconds <= 0:
        return
    from rxrx2_zarr import _convert

    real = _convert.convert_site

    def slow_convert_site(job: Any, item: Any) -> Any:
        time.sleep(seconds / 2)
        result = real(job, item)
        time.sleep(seconds / 2)
        return result

    _convert.convert_site = slow_convert_site


def rxrx2_cli(args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None) -> Process:
    """``rxrx2-zarr ARGS`` as a subprocess of this checkout (its output in ``log``)."""
    return Process("rxrx2-zarr " + (args[0] if args else ""), [PYTHON, "-m", "rxrx2_zarr.cli", *args], log,
                   env=service_env(env))
