"""Secrets on disk and in print: files written with mode 0600 from their first byte, read back with a
check that nobody else can read them, and URLs with their credentials masked before anything prints
or logs them."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*)(:[^@/\s]*)?@", re.I)


def write_private(path: Path, data: bytes) -> None:
    """Mode 0600 from creation (no chmod after the fact, so no moment where others could read it), then
    renamed into place, so a reader never sees half a secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def read_secret(path: Path) -> str:
    """The first line of a secret file. Refuses a file others may read: a secret that leaked on disk
    is not one to keep using silently."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return path.read_text(encoding="utf-8").strip()


def mask_url(url: str | None) -> str:
    """redis://gateway:s3cret@host:6379/0 -> redis://gateway:***@host:6379/0 (no user: no change)."""
    if not url:
        return str(url)
    if "," in url.split("@", 1)[-1].split("/", 1)[0]:  # redis+cluster:// or redis+sentinel://: many hosts
        return mask_urls_in(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_urls_in(text: str) -> str:
    """Every scheme://user:password@ in free text, masked (for log lines)."""
    return URL_CREDENTIALS.sub(
        lambda m: f"{m.group('scheme')}{m.group('user')}:***@" if m.group(3) else m.group(0), text
    )


def has_password(url: str | None) -> bool:
    return bool(url) and urlsplit(url or "").password is not None
