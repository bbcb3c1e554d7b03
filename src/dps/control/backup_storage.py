"""Where backups are kept: a local directory or an S3-compatible bucket, behind one interface.

A backup is always written into a local folder first (:meth:`BackupStorage.stage`) — SQLite's
online backup API and ``pg_dump`` write files — and then made complete by
:meth:`BackupStorage.publish`: a rename for a directory; for S3, an upload of every file with
``manifest.json`` last, so a backup whose manifest is there is complete and a failed upload
leaves no backup that ``backups()`` would list (its objects are deleted). Reading goes the
other way: :meth:`BackupStorage.fetch` gives a local folder (an S3 backup is downloaded into a
temporary one), so verify and restore work on files whatever the storage.

``s3://bucket/prefix`` is the target of ``dps backup create --target`` or ``backup.directory``;
a backup is ``s3://bucket/prefix/backup-<UTC time>/``. The endpoint, region and credentials
come from ``backup.s3`` in pipeline.yaml (secret references) or the CLI's ``--s3-*`` options;
boto3 is imported only when S3 is used.
"""

from __future__ import annotations

import abc
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from dps.config.models import BackupS3
from dps.core.errors import SecretError

__all__ = [
    "BackupError",
    "BackupStorage",
    "LocalStorage",
    "S3Storage",
    "is_s3",
    "open_backup",
    "storage_for",
]

MANIFEST: Final = "manifest.json"
S3_SCHEME: Final = "s3://"


class BackupError(Exception):
    """A backup could not be created, verified or restored; the message says why and what next."""


def is_s3(location: str | Path) -> bool:
    """Whether ``location`` is an ``s3://`` URL."""
    return str(location).startswith(S3_SCHEME)


class BackupStorage(abc.ABC):
    """A place that holds complete backups, each named ``backup-<UTC time>``."""

    #: Where it is, as shown to operators (a directory or ``s3://bucket/prefix``).
    location: str
    #: A local directory the backups live in (skipped when copying the data directory).
    local_root: Path | None = None

    @abc.abstractmethod
    def stage(self, name: str) -> Path:
        """A new, empty local folder to write backup ``name`` into."""

    @abc.abstractmethod
    def publish(self, staged: Path, name: str) -> str:
        """Make the staged backup complete; returns its reference (path or URL)."""

    @abc.abstractmethod
    def discard(self, staged: Path) -> None:
        """Remove a staged backup that will not be published."""

    @abc.abstractmethod
    def backups(self) -> list[str]:
        """References of the complete backups, oldest first."""

    @abc.abstractmethod
    def delete(self, ref: str) -> None:
        """Delete one backup."""

    @abc.abstractmethod
    def fetch(self, ref: str) -> contextlib.AbstractContextManager[Path]:
        """A local folder holding backup ``ref`` for the duration of the ``with``."""

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` backups; returns what was removed."""
        refs = self.backups()
        removed = refs[: max(0, len(refs) - keep)]
        for ref in removed:
            self.delete(ref)
        return removed


class LocalStorage(BackupStorage):
    """Backups as folders of a local directory; ``<name>.partial`` until renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.local_root = self.root
        self.location = str(self.root)

    def stage(self, name: str) -> Path:
        partial = self.root / f"{name}.partial"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            partial.mkdir()
        except OSError as exc:
            raise BackupError(f"The backup target {self.root} is not writable: {exc}.") from exc
        return partial

    def publish(self, staged: Path, name: str) -> str:
        final = self.root / name
        staged.rename(final)
        return str(final)

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def backups(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [
            str(p)
            for p in sorted(self.root.glob("backup-*"))
            if p.is_dir() and not p.name.endswith(".partial")
        ]

    def delete(self, ref: str) -> None:
        shutil.rmtree(ref)

    @contextlib.contextmanager
    def fetch(self, ref: str) -> Iterator[Path]:
        yield Path(ref)


def _split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``."""
    rest = url[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise BackupError(f"{url!r} names no bucket; expected s3://bucket/prefix.")
    return bucket, prefix.strip("/")


class S3Storage(BackupStorage):
    """Backups as objects ``<prefix>/backup-<time>/<file>`` of an S3-compatible bucket."""

    def __init__(self, url: str, settings: BackupS3 | None = None) -> None:
        self.bucket, self.prefix = _split_s3(url)
        self.settings = settings or BackupS3()
        self.location = f"{S3_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None

    # -- the client -------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            keys: dict[str, str] = {}
            if s.access_key_id_ref is not None and s.secret_access_key_ref is not None:
                try:
                    keys = {
                        "aws_access_key_id": s.access_key_id_ref.resolve(),
                        "aws_secret_access_key": s.secret_access_key_ref.resolve(),
                    }
                except SecretError as exc:
                    raise BackupError(
                        f"The S3 credentials for {self.location} cannot be read: {exc}"
                    ) from exc
            self._client = boto3.client(
                "s3",
                endpoint_url=s.endpoint_url,
                region_name=s.region,
                config=Config(s3={"addressing_style": s.addressing_style}),
                **keys,
            )
        return self._client

    def _fail(self, doing: str, exc: Exception) -> BackupError:
        where = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return BackupError(
            f"S3 {doing} on {self.location}{where} failed: {exc}. Check the bucket, the endpoint "
            "and the credentials (backup.s3 in pipeline.yaml, or the --s3-* options)."
        )

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("listing", exc) from exc
        return keys

    def _delete_keys(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for start in range(0, len(keys), 1000):
                chunk = keys[start : start + 1000]
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("deleting", exc) from exc

    def _name(self, ref: str) -> str:
        bucket, key = _split_s3(ref)
        name = key.rsplit("/", 1)[-1]
        if bucket != self.bucket or key != self._key(name) or not name.startswith("backup-"):
            raise BackupError(f"{ref} is not a backup of {self.location}.")
        return name

    # -- BackupStorage ------------------------------------------------------------------------
    def stage(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"dps-{name}-"))

    def publish(self, staged: Path, name: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        files = sorted(p for p in staged.rglob("*") if p.is_file())
        # The manifest last: a backup is complete (listed) once its manifest is there.
        files.sort(key=lambda p: p.relative_to(staged).as_posix() == MANIFEST)
        uploaded: list[str] = []
        try:
            for path in files:
                key = self._key(name, path.relative_to(staged).as_posix())
                self.client.upload_file(str(path), self.bucket, key)
                uploaded.append(key)
        except (BotoCoreError, ClientError, OSError) as exc:
            with contextlib.suppress(BackupError):
                self._delete_keys(uploaded)
            raise self._fail("upload", exc) from exc
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return f"{S3_SCHEME}{self.bucket}/{self._key(name)}"

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def backups(self) -> list[str]:
        names = set()
        for key in self._keys(self._key("backup-")):
            rel = key[len(self.prefix) + 1 :] if self.prefix else key
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST:
                names.add(parts[0])
        return [f"{S3_SCHEME}{self.bucket}/{self._key(n)}" for n in sorted(names)]

    def delete(self, ref: str) -> None:
        name = self._name(ref)
        keys = self._keys(self._key(name) + "/")
        manifest = self._key(name, MANIFEST)
        # The manifest first: a deletion cut short leaves an incomplete backup, never a listed
        # backup with missing files.
        self._delete_keys([k for k in keys if k == manifest])
        self._delete_keys([k for k in keys if k != manifest])

    @contextlib.contextmanager
    def fetch(self, ref: str) -> Iterator[Path]:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._name(ref)
        base = self._key(name) + "/"
        keys = self._keys(base)
        if not keys:
            raise BackupError(f"{ref} holds no objects: no such backup.")
        folder = Path(tempfile.mkdtemp(prefix=f"dps-{name}-"))
        try:
            for key in keys:
                dest = folder / key[len(base) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.client.download_file(self.bucket, key, str(dest))
                except (BotoCoreError, ClientError) as exc:
                    raise self._fail(f"download of {key}", exc) from exc
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def storage_for(location: str | Path, s3: BackupS3 | None = None) -> BackupStorage:
    """The storage of a target: ``s3://bucket/prefix`` or a local directory."""
    if is_s3(location):
        return S3Storage(str(location), s3)
    return LocalStorage(Path(location))


@contextlib.contextmanager
def open_backup(ref: str | Path, s3: BackupS3 | None = None) -> Iterator[Path]:
    """A local folder holding the backup ``ref`` (a folder, or ``s3://.../backup-<time>``)."""
    if not is_s3(ref):
        yield Path(ref)
        return
    url = str(ref).rstrip("/")
    parent = url.rsplit("/", 1)[0]
    if parent == S3_SCHEME.rstrip("/") or parent + "/" == S3_SCHEME:
        raise BackupError(f"{ref} names no backup; expected s3://bucket/prefix/backup-<time>.")
    with S3Storage(parent, s3).fetch(url) as folder:
        yield folder
