"""Finding every uuid's image and decoding it once up front, so training never meets a bad file."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .. import progress
from ..config import DataConfig
from .schema import MAX_SHOWN

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """Images are missing or cannot be decoded; the message lists the uuids."""


@dataclass
class ImageReport:
    """Where each uuid's image is, and which uuids are missing or undecodable."""

    paths: dict[str, str]
    hashes: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)  # uuid -> reason

    @property
    def bad(self) -> list[str]:
        return sorted(set(self.missing) | set(self.corrupt))

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing image(s): {self.missing[:MAX_SHOWN]}")
        if self.corrupt:
            shown = dict(list(self.corrupt.items())[:MAX_SHOWN])
            parts.append(f"{len(self.corrupt)} undecodable image(s): {shown}")
        return "; ".join(parts) or "all images present and decodable"


def _find_image(image_dir: Path, uuid: str, extensions: list[str]) -> Path | None:
    for ext in extensions:
        candidate = image_dir / f"{uuid}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _check_one(path: Path) -> tuple[str | None, str | None]:
    """Return (content hash, error) after a full decode with Pillow."""
    try:
        raw = path.read_bytes()
        with Image.open(path) as image:
            image.load()
            if image.width < 2 or image.height < 2:
                return None, f"image too small ({image.width}x{image.height})"
    except Exception as error:  # noqa: BLE001 - any decoder failure is reported, not raised
        return None, f"{type(error).__name__}: {error}"
    return hashlib.blake2b(raw, digest_size=16).hexdigest(), None


def check_images(uuids: list[str], cfg: DataConfig, *, decode: bool = True) -> ImageReport:
    """Locate every uuid's image and (optionally) fully decode and hash it, in parallel.

    Done once up front so that training never meets a bad file mid-epoch.
    """
    image_dir = Path(cfg.images)
    report = ImageReport(paths={})
    for uuid in dict.fromkeys(uuids):
        found = _find_image(image_dir, uuid, cfg.image_extensions)
        if found is None:
            report.missing.append(uuid)
        else:
            report.paths[uuid] = str(found)
    if decode:
        items = list(report.paths.items())
        with ThreadPoolExecutor(max_workers=8) as pool:
            checks = pool.map(lambda item: _check_one(Path(item[1])), items)
            results = list(progress.bar(checks, total=len(items), desc="checking images"))
        for (uuid, _), (digest, error) in zip(items, results, strict=True):
            if error is not None:
                report.corrupt[uuid] = error
            else:
                report.hashes[uuid] = digest
        for uuid in report.corrupt:
            report.paths.pop(uuid)
    return report


def enforce_image_policy(report: ImageReport, cfg: DataConfig, *, what: str) -> None:
    """Raise on bad images unless the config says skip-and-report."""
    if not report.bad:
        return
    message = f"{what}: {report.describe()} (looked in {cfg.images} for {cfg.image_extensions})"
    if cfg.bad_images == "fail":
        raise ImageError(message + "; set data.bad_images=skip to drop them and continue")
    log.warning("skipping bad images — %s", message)
