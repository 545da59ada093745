"""Fetch official archives: urllib with a short timeout, md5-verified, written atomically."""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.request
from pathlib import Path
from typing import NamedTuple

from mhkd.data.base import DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 15.0


class Remote(NamedTuple):
    """An official file: its name on disk, where it is published and its published md5."""

    filename: str
    url: str
    md5: str


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(remote: Remote, root: Path) -> Path:
    """Download ``remote`` into ``root``; a partial or corrupt file never takes the real name.

    Network failures surface as ``OSError`` so callers can say which files to place by hand.
    """
    root.mkdir(parents=True, exist_ok=True)
    dest = root / remote.filename
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", remote.url, dest)
    try:
        with (
            urllib.request.urlopen(remote.url, timeout=TIMEOUT_S) as response,
            open(part, "wb") as f,
        ):
            shutil.copyfileobj(response, f, 1 << 20)
        got = md5sum(part)
        if got != remote.md5:
            raise DataError(f"checksum mismatch for {remote.url}: md5 {got}, expected {remote.md5}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def ensure(
    dataset: str, root: Path, remotes: list[Remote], download: bool, alternatives: str = ""
) -> None:
    """Make every file of ``remotes`` exist in ``root``, downloading missing ones if allowed.

    When they cannot be had, the error names each file, its URL and the folder to put it in;
    ``alternatives`` describes other accepted layouts.
    """
    missing = [r for r in remotes if not (root / r.filename).is_file()]
    if not missing:
        return
    wanted = ", ".join(f"{r.filename} ({r.url})" for r in missing)
    advice = f"{dataset}: put {wanted}{alternatives} in {root}"
    if not download:
        raise DataError(f"{advice} (download disabled)")
    for remote in missing:
        try:
            fetch(remote, root)
        except OSError as exc:
            raise DataError(f"{advice} (download failed: {_one_line(exc)})") from exc
