"""The S3 backend (AWS S3, Cloudflare R2, Backblaze B2, SeaweedFS, MinIO) via boto3.

Uploads carry ``ChecksumSHA256``: the store recomputes it and refuses the PUT on a
mismatch (``BadDigest``); when a store does not echo the checksum back, the object is
read back and hashed instead. Timeouts and retries are bounded so that an unreachable
store raises :class:`~objstore.errors.UnavailableError` instead of hanging.
Credentials never appear in logs or ``repr``.
"""

from __future__ import annotations

import builtins
import configparser
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeVar

import boto3
import botocore.exceptions as bex
import structlog
from botocore.config import Config as BotoConfig

from config.settings import S3Settings
from objstore.base import (
    CHUNK,
    ObjectInfo,
    check_sha256_hex,
    hash_stream,
    sha256_b64,
    sha256_hex_from_b64,
    validate_key,
    validate_prefix,
)
from objstore.errors import (
    EndpointUnreachableError,
    IntegrityError,
    NotFoundError,
    ObjectStoreError,
    StoreConfigError,
    UnavailableError,
)

log = structlog.get_logger("objstore.s3")

T = TypeVar("T")

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_INTEGRITY = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum",
              "InvalidRequest.Checksum"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}
_TRANSIENT = {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError",
              "RequestTimeTooSkewed", "503", "500", "502", "504"}
_TRANSPORT = (bex.HTTPClientError, bex.ResponseStreamingError, bex.IncompleteReadError,
              bex.ConnectionError)

LIFECYCLE_RULE_ID = "camstack-pack-expiry"


def load_credentials(path: Path, profile: str) -> tuple[str, str]:
    """Read ``aws_access_key_id`` / ``aws_secret_access_key`` from an AWS-style INI file.

    Args:
        path: The file (``[default]`` then ``key = value`` lines).
        profile: The section to read.

    Returns:
        (access key id, secret key).

    Raises:
        StoreConfigError: Naming ``store.s3.credentials_file`` when the file or a key
            is missing (the file's content is never put in the message).
    """
    setting = "store.s3.credentials_file"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError) as e:
        raise StoreConfigError(setting, f"cannot read {path}: {type(e).__name__}") from None
    if not parser.has_section(profile):
        raise StoreConfigError(setting, f"{path} has no [{profile}] section")
    key_id = parser.get(profile, "aws_access_key_id", fallback="").strip()
    secret = parser.get(profile, "aws_secret_access_key", fallback="").strip()
    if not key_id or not secret:
        raise StoreConfigError(
            setting, f"[{profile}] of {path} needs aws_access_key_id and aws_secret_access_key")
    return key_id, secret


class _Body(io.RawIOBase):
    """A botocore streaming body whose transport errors become ``UnavailableError``."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._body.read(len(b))
        except _TRANSPORT as e:
            raise UnavailableError(f"{self._key}: read failed: {type(e).__name__}") from e
        except bex.FlexibleChecksumError as e:
            raise IntegrityError(f"{self._key}: response checksum mismatch") from e
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    """Objects in one S3 bucket.

    Args:
        settings: The ``store.s3`` section.
    """

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._cred_setting = "store.s3.access_key_id / store.s3.secret_access_key"
        kwargs: dict[str, Any] = {"region_name": settings.region}
        if settings.access_key_id:
            kwargs["aws_access_key_id"] = settings.access_key_id
            kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
            source = "settings"
        elif settings.credentials_file is not None:
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = load_credentials(
                settings.credentials_file, settings.credentials_profile)
            self._cred_setting = "store.s3.credentials_file"
            source = "credentials_file"
        else:
            self._cred_setting = "AWS environment credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)"
            source = "environment"
        session = boto3.session.Session(**kwargs)
        cfg = BotoConfig(
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            # Every PUT carries ChecksumSHA256 (signed, verified by the store): the body
            # is not hashed a second time for the signature (over http botocore would).
            s3={"addressing_style": settings.addressing_style,
                "payload_signing_enabled": False},
            signature_version="s3v4",
            max_pool_connections=16,
            tcp_keepalive=True,
        )
        self._client: Any = session.client("s3", endpoint_url=settings.endpoint_url, config=cfg)
        self._store_verifies: bool | None = None
        log.info("objstore_s3_configured", endpoint=settings.endpoint_url or "aws",
                 bucket=self.bucket, region=settings.region,
                 addressing=settings.addressing_style, credentials=source)

    def __repr__(self) -> str:
        return (f"S3Store(endpoint_url={self.settings.endpoint_url!r}, "
                f"bucket={self.bucket!r}, region={self.settings.region!r})")

    @property
    def client(self) -> Any:
        """The boto3 S3 client (for tools and benchmarks)."""
        return self._client

    # -- error mapping ---------------------------------------------------------------

    def _raise(self, e: Exception, key: str) -> NoReturn:
        if isinstance(e, bex.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _NOT_FOUND:
                raise NotFoundError(key) from None
            if code == "NoSuchBucket":
                raise StoreConfigError(
                    "store.s3.bucket", f"bucket {self.bucket!r} does not exist") from None
            if code in _INTEGRITY:
                raise IntegrityError(f"{key}: the store rejected the checksum ({code})") from None
            if code in _CREDENTIALS:
                raise StoreConfigError(
                    self._cred_setting,
                    f"credentials rejected or no access to bucket {self.bucket!r} ({code})",
                ) from None
            if code in _TRANSIENT or status >= 500:
                raise UnavailableError(f"{key}: store error {code or status}") from None
            raise ObjectStoreError(f"{key}: S3 error {code or status}") from None
        if isinstance(e, bex.FlexibleChecksumError):
            raise IntegrityError(f"{key}: response checksum mismatch") from None
        if isinstance(e, bex.NoCredentialsError | bex.PartialCredentialsError):
            raise StoreConfigError(self._cred_setting, "no S3 credentials found") from None
        if isinstance(e, _TRANSPORT):
            raise UnavailableError(
                f"{key}: store unreachable at {self.settings.endpoint_url or 'aws'} "
                f"({type(e).__name__})") from None
        raise ObjectStoreError(f"{key}: {type(e).__name__}") from None

    def _call(self, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (bex.BotoCoreError, bex.ClientError) as e:
            self._raise(e, key)

    # -- interface -------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the bucket: credentials, bucket and endpoint are right.

        Raises:
            StoreConfigError: Naming the setting at fault (``EndpointUnreachableError``
                when nothing answers at ``store.s3.endpoint_url``).
        """
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except bex.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreConfigError(
                    "store.s3.bucket", f"bucket {self.bucket!r} does not exist") from None
            if code in _CREDENTIALS or code == "400":
                raise StoreConfigError(
                    self._cred_setting,
                    f"credentials rejected or no access to bucket {self.bucket!r} ({code})",
                ) from None
            self._raise(e, self.bucket)
        except _TRANSPORT as e:
            raise EndpointUnreachableError(
                "store.s3.endpoint_url",
                f"nothing answers at {self.settings.endpoint_url or 'aws'} ({type(e).__name__})",
            ) from None
        except bex.BotoCoreError as e:
            self._raise(e, self.bucket)
        log.info("objstore_s3_ready", bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, *, sha256: str | None = None,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        """PUT ``data`` with its SHA-256 (see :meth:`put_stream`)."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and check_sha256_hex(sha256) != digest:
            raise IntegrityError(f"{key}: data does not match the given sha256")
        return self.put_stream(key, io.BytesIO(data), sha256=digest, size=len(data),
                               content_type=content_type)

    def put_stream(self, key: str, stream: BinaryIO, *, sha256: str, size: int,
                   content_type: str = "application/octet-stream") -> ObjectInfo:
        """One PutObject of ``size`` bytes with ``ChecksumSHA256``.

        The store verifies the checksum; if its answer does not echo it (a store without
        flexible checksums), the object is read back and hashed.

        Returns:
            The stored object's info.

        Raises:
            IntegrityError: If the store refused the bytes or holds other bytes.
            UnavailableError: If the store cannot be reached (retry later).
        """
        validate_key(key)
        check_sha256_hex(sha256)
        resp = self._call(key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=key, Body=stream, ContentLength=size,
            ChecksumSHA256=sha256_b64(sha256), ContentType=content_type))
        echoed = resp.get("ChecksumSHA256")
        if echoed is not None:
            if sha256_hex_from_b64(echoed) != sha256:
                raise IntegrityError(f"{key}: store reports sha256 {echoed}, sent {sha256}")
            self._store_verifies = True
        else:
            self._store_verifies = False
            with self.open(key) as body:
                got, n = hash_stream(body)
            if got != sha256 or n != size:
                raise IntegrityError(f"{key}: read back {n} bytes sha256 {got}, sent {sha256}")
        return ObjectInfo(key=key, size=size, sha256=sha256, etag=resp.get("ETag"))

    @property
    def store_verifies_checksums(self) -> bool | None:
        """Whether the last upload's checksum was verified by the store (None: no upload)."""
        return self._store_verifies

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        """GET the whole object (response checksum validated when the store sends one).

        Raises:
            NotFoundError: If it does not exist.
            IntegrityError: If the bytes do not match ``sha256``.
        """
        with self.open(key) as body:
            data = body.read()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != check_sha256_hex(sha256):
            raise IntegrityError(f"{key}: stored bytes do not match sha256 {sha256}")
        return data

    def open(self, key: str) -> BinaryIO:
        """A buffered stream of the object (GET with checksum mode on).

        Raises:
            NotFoundError: If it does not exist.
        """
        validate_key(key)
        resp = self._call(key, lambda: self._client.get_object(
            Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"))
        return io.BufferedReader(_Body(resp["Body"], key), CHUNK)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """A ranged GET of ``[start, start+length)``.

        Raises:
            ValueError: If ``start`` < 0 or ``length`` < 1.
            NotFoundError: If it does not exist.
        """
        validate_key(key)
        if start < 0 or length < 1:
            raise ValueError("start must be >= 0 and length >= 1")
        try:
            resp = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
        except bex.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            self._raise(e, key)
        except bex.BotoCoreError as e:
            self._raise(e, key)
        with io.BufferedReader(_Body(resp["Body"], key), CHUNK) as body:
            return body.read()

    def head(self, key: str) -> ObjectInfo | None:
        """HEAD the object (with its SHA-256 when the store keeps it), ``None`` if missing."""
        validate_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except bex.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            self._raise(e, key)
        except bex.BotoCoreError as e:
            self._raise(e, key)
        cs = resp.get("ChecksumSHA256")
        modified = resp.get("LastModified")
        return ObjectInfo(
            key=key, size=int(resp["ContentLength"]),
            sha256=sha256_hex_from_b64(cs) if cs else None, etag=resp.get("ETag"),
            modified_ms=int(modified.timestamp() * 1000) if modified is not None else None)

    def exists(self, key: str) -> bool:
        """Whether the object exists (one HEAD)."""
        return self.head(key) is not None

    def delete(self, key: str) -> None:
        """DeleteObject (S3 answers success for a missing key)."""
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return
            self._raise(e, key)
        except bex.BotoCoreError as e:
            self._raise(e, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 pages under ``prefix``, in key order."""
        validate_prefix(prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        it = iter(pages)
        while True:
            try:
                page = next(it)
            except StopIteration:
                return
            except (bex.BotoCoreError, bex.ClientError) as e:
                self._raise(e, prefix or "/")
            for obj in page.get("Contents", []):
                modified = obj.get("LastModified")
                yield ObjectInfo(
                    key=obj["Key"], size=int(obj["Size"]), etag=obj.get("ETag"),
                    modified_ms=int(modified.timestamp() * 1000) if modified else None)

    def url(self, key: str, *, expires_s: int | None = None) -> str:
        """A presigned GET URL valid ``expires_s`` (default ``presign_expires_s``)."""
        validate_key(key)
        expires = expires_s if expires_s is not None else self.settings.presign_expires_s
        url: str = self._call(key, lambda: self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires))
        return url

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    # -- lifecycle -------------------------------------------------------------------

    def apply_lifecycle(self, prefix: str, days: int) -> builtins.list[dict[str, Any]]:
        """Set (or replace) the rule "expire objects under ``prefix`` after ``days``".

        Other rules of the bucket are kept; ours is found by its ID
        (``camstack-pack-expiry``).

        Returns:
            The bucket's rules as read back from the store.

        Raises:
            StoreConfigError: If the store refuses lifecycle configuration.
        """
        validate_prefix(prefix)
        if not 1 <= days <= 36500:
            raise ValueError("days must be 1..36500")
        try:
            rules = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except bex.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                self._raise(e, self.bucket)
            rules = []
        except bex.BotoCoreError as e:
            self._raise(e, self.bucket)
        rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]
        rules.append({"ID": LIFECYCLE_RULE_ID, "Filter": {"Prefix": prefix},
                      "Status": "Enabled", "Expiration": {"Days": days}})
        try:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
        except bex.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NotImplemented", "501", "MalformedXML"):
                raise StoreConfigError(
                    "store.backend", f"this store refuses lifecycle rules ({code})") from None
            self._raise(e, self.bucket)
        except bex.BotoCoreError as e:
            self._raise(e, self.bucket)
        back: builtins.list[dict[str, Any]] = self._call(
            self.bucket,
            lambda: self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"])
        log.info("objstore_lifecycle_applied", bucket=self.bucket, prefix=prefix, days=days)
        return back
