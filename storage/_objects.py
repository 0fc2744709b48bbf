"""Object storage for artifacts (ARTIFACTS_URL=s3://bucket/prefix): what workers share without a
shared volume.

An S3 PUT is atomic: an object appears whole or not at all, so the file store's "write under a
temporary name, then rename" becomes "upload the entry's files, its marker last": a reader takes an
entry as finished only when its marker object exists (base weights, a feature cache's meta.json),
as it takes a folder as finished only when its marker file exists. A marker is written
create-only (`If-None-Match: *`, which AWS S3, MinIO and moto honour): when two builders race
(their build lock was not shared, see storage/_locks.py), the first entry stands and the second
builder uses it. Optuna's own `Boto3ArtifactStore` keeps the study's final models and records, under
the same prefix, so the dashboard and the report read them from the bucket.

Credentials and region come from boto3's usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_SHARED_CREDENTIALS_FILE, an instance or pod role); an S3-compatible server is named by
ARTIFACTS_ENDPOINT_URL.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from storage._errors import StorageConfigError, StorageUnavailableError

logger = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_PRECONDITION = {"PreconditionFailed", "412"}  # not 409 (a conflicting write still in flight): an error
# What no wait mends: the bucket, the credentials or the region are wrong (anything else, botocore has
# already retried through its standard retries before `check` sees it).
_CONFIG = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "AuthorizationHeaderMalformed", "PermanentRedirect", "InvalidBucketName", "301", "403", "404"}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules, as far as a URL shows


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class ObjectStore:
    """One bucket and a key prefix in it. `sub("checkpoints")` is the same bucket one level down."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix.strip("/"), endpoint_url or None
        self._client = client

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> ObjectStore:
        parts = urlsplit(url)
        if "@" in parts.netloc:  # never echo it: what precedes the @ would be credentials
            raise StorageConfigError("ARTIFACTS_URL holds credentials: write s3://BUCKET/PREFIX and give the keys "
                                     "where boto3 reads them (AWS_SHARED_CREDENTIALS_FILE, a pod identity)")
        if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
            raise StorageConfigError(f"ARTIFACTS_URL={url!r} is not an object-store URL: write s3://BUCKET/PREFIX "
                                     "(a bucket name of 3-63 lower-case letters, digits, '.' and '-'; an "
                                     "S3-compatible server and its port go in ARTIFACTS_ENDPOINT_URL)")
        return cls(parts.netloc, parts.path, endpoint_url=endpoint_url)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Standard retries (throttling, 5xx, connection errors) with bounded waits: a store call
            # never hangs a worker's trial for longer than its read timeout times its attempts.
            config = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60)
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def sub(self, *parts: str) -> ObjectStore:
        return ObjectStore(self.bucket, self.key(*parts), endpoint_url=self.endpoint_url, client=self._client)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def check(self) -> None:
        """The bucket is there and these credentials may list it; else an error naming the fix."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(), MaxKeys=1)
        except ClientError as exc:
            if _code(exc) not in _CONFIG:
                raise StorageUnavailableError(f"ARTIFACTS_URL {self.url}: the object store failed a listing after "
                                              f"its retries ({_code(exc) or exc})") from None
            raise StorageConfigError(
                f"ARTIFACTS_URL {self.url}: the bucket refused a listing ({_code(exc)}): create the bucket, check "
                "the region, or give these credentials s3:ListBucket, s3:GetObject, s3:PutObject and "
                "s3:DeleteObject on it") from None
        except NoCredentialsError:
            raise StorageConfigError(f"ARTIFACTS_URL {self.url}: no credentials for the object store: give them "
                                     "where boto3 reads them (AWS_SHARED_CREDENTIALS_FILE, AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, a pod identity)") from None
        except BotoCoreError as exc:
            where = self.endpoint_url or "AWS S3"
            raise StorageUnavailableError(f"ARTIFACTS_URL {self.url}: cannot reach {where} after its retries "
                                          f"({type(exc).__name__}); check ARTIFACTS_ENDPOINT_URL") from None

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def download(self, name: str, path: Path) -> bool:
        """Copy object `name` to `path` (through a temporary name, so `path` is whole or absent);
        False when there is no such object."""
        from botocore.exceptions import ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self.client.download_file(self.bucket, self.key(name), str(tmp))
        except ClientError as exc:
            tmp.unlink(missing_ok=True)
            if _code(exc) in _MISSING:
                return False
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        return True

    def upload(self, path: Path, name: str, *, if_absent: bool = False) -> bool:
        """Put the file at `path` as object `name`. `if_absent`: only if no such object exists yet,
        as one atomic request (False when one did: the earlier object stands)."""
        from botocore.exceptions import ClientError

        if not if_absent:
            self.client.upload_file(str(path), self.bucket, self.key(name))  # multipart past 8 MB
            return True
        try:
            with open(path, "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) in _PRECONDITION:
                return False
            raise
        return True

    def names(self, under: str = "") -> Iterator[str]:
        """Object names (relative to this prefix) under `under`."""
        base = self.key(under)
        base = f"{base}/" if base else ""
        strip = len(self.key()) + 1 if self.key() else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def delete_under(self, under: str) -> int:
        """Delete every object under `under/`; how many were deleted."""
        keys = [self.key(name) for name in self.names(under)]
        failed = []
        for start in range(0, len(keys), 1000):
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})
            failed += [f"{e.get('Key')} ({e.get('Code')})" for e in answer.get("Errors", [])]
        if failed:
            logger.warning("%s: %d object(s) not deleted: %s", self.url, len(failed), ", ".join(failed[:5]))
        return len(keys) - len(failed)

    def artifact_store(self) -> PrefixedArtifactStore:
        from optuna.artifacts import Boto3ArtifactStore

        return PrefixedArtifactStore(Boto3ArtifactStore(self.bucket, client=self.client), self.key("artifacts"))


class PrefixedArtifactStore:
    """Optuna's Boto3ArtifactStore under a key prefix (Optuna's keys are the bare artifact ids):
    one bucket can hold several deployments' artifacts, each under its ARTIFACTS_URL prefix."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))
