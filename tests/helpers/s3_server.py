"""A real S3-compatible server on 127.0.0.1 for the tests: moto's server mode (`python -m
moto.server`, in memory), started by the test and stopped by it. `S3Server.env` is what a process
needs to reach it the way a deployment would (ARTIFACTS_URL, ARTIFACTS_ENDPOINT_URL and boto3's own
credential variables)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.processes import free_port, stop, wait_for_server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "cnn-search-test", "AWS_SECRET_ACCESS_KEY": "cnn-search-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def env(self, prefix: str) -> dict[str, str]:
        return {**CREDENTIALS, "ARTIFACTS_URL": self.url(prefix), "ARTIFACTS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextlib.contextmanager
def s3_server(folder: Path, *, bucket: str = "cnn-search-test", timeout: float = 60) -> Iterator[S3Server]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(proc, f"{endpoint}/moto-api/", folder / "moto.log", "moto's S3 server", timeout)
        server = S3Server(endpoint, bucket)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        stop(proc)
        log.close()
