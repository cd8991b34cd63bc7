"""Blob storage for uploaded files: a small protocol, the local filesystem implementation and an in-memory fake.

Keys are opaque, relative, slash-separated paths made of ``[A-Za-z0-9._-]`` segments (``uploads/2026/upl_ab12``);
anything that could escape the root (``..``, absolute paths, backslashes, empty segments) is refused with
``ValidationFailed`` before the filesystem is touched. Object storage (GCS/S3) plugs in behind the same protocol.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from pathlib import Path
from typing import Protocol

from curaway.errors import NotFoundError, RetryableError, ValidationFailed
from curaway.settings import Settings

MAX_KEY_LENGTH = 400
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing any previous value) atomically."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``NotFoundError`` when absent."""
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` when something was removed."""
        ...

    def exists(self, key: str) -> bool: ...


def validate_key(key: str) -> str:
    """Return ``key`` when it is a safe relative key, else raise ``ValidationFailed`` (never echoing the key)."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed("storage key is empty or too long", code="storage_key_invalid")
    segments = key.split("/")
    for segment in segments:
        if segment in {".", ".."} or not _SEGMENT.match(segment) or ".." in segment:
            raise ValidationFailed("storage key has an unsafe segment", code="storage_key_invalid")
    return key


class LocalFileStorage:
    """Files under ``root``; writes go to a temporary sibling and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        validate_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if root != path and root not in path.parents:
            raise ValidationFailed("storage key escapes the storage root", code="storage_key_invalid")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise RetryableError("storage write failed", code="storage_unavailable") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("stored object not found", code="storage_object_missing") from exc
        except IsADirectoryError as exc:
            raise NotFoundError("stored object not found", code="storage_object_missing") from exc
        except OSError as exc:
            raise RetryableError("storage read failed", code="storage_unavailable") from exc

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RetryableError("storage delete failed", code="storage_unavailable") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class InMemoryStorage:
    """The shipped fake: same key rules and errors, bytes kept in a dict (thread-safe)."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        with self._lock:
            self._objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        validate_key(key)
        with self._lock:
            try:
                return self._objects[key]
            except KeyError as exc:
                raise NotFoundError("stored object not found", code="storage_object_missing") from exc

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._lock:
            return self._objects.pop(key, None) is not None

    def exists(self, key: str) -> bool:
        validate_key(key)
        with self._lock:
            return key in self._objects

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)


def build_storage(settings: Settings) -> Storage:
    """The configured storage: local files under ``settings.data_dir / "uploads"``."""
    return LocalFileStorage(settings.data_dir / "uploads")
