"""The box's side: fetch registry.json through python-tuf's ngclient and keep the last good copy.

One ``sync_once`` is one TUF client workflow (root → timestamp → snapshot →
targets → target file), done by ``tuf.ngclient.Updater``: signatures,
thresholds, expiry, version rollback, mix-and-match and length limits are all
ngclient's checks. On top we add the semantic check (``model.parse``) and a
size ceiling, and write ``REGISTRY_DIR/registry.json`` atomically with fsync
only after everything passed; any refusal leaves the last good copy in place.

Layout of REGISTRY_DIR::

    registry.json   the verified registry the relay reads
    state.json      the agent's report (see ``services.registry_sync``)
    tuf/            ngclient's trusted metadata cache (root_history/, timestamp.json, ...)

``file://`` URLs are served by ``LocalFetcher`` (ngclient's own fetcher speaks
only HTTP(S)); a development box uses it to sync from its registry-repo
directory without running a web server. Every check is the same either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from appliance.registry import model
from appliance.registry.repo import TARGET_NAME, write_atomic
from appliance.registry.trusted import trusted_expiry


class SyncError(Exception):
    """An update that was refused or could not be fetched; one line saying why."""


@dataclass(frozen=True)
class SyncResult:
    version: int  # targets version of the registry now trusted
    expires: dt.datetime  # earliest expiry of the trusted metadata
    members: int
    changed: bool  # registry.json was rewritten


class LocalFetcher(FetcherInterface):
    """Fetch file:// URLs for ngclient; a missing file is a 404, as on a web server.

    ngclient still enforces every length limit on what this yields.
    """

    CHUNK = 65536

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise tuf_exc.DownloadError(f"LocalFetcher cannot fetch {url}")
        try:
            fh = open(unquote(parsed.path), "rb")  # closed by _chunks
        except FileNotFoundError:
            raise tuf_exc.DownloadHTTPError(f"{url}: not found", 404) from None
        return self._chunks(fh)

    def _chunks(self, fh: object) -> Iterator[bytes]:
        with fh:  # type: ignore[attr-defined]
            while chunk := fh.read(self.CHUNK):  # type: ignore[attr-defined]
                yield chunk


def _reason(exc: BaseException) -> str:
    """One line for the operator: which check refused the update."""
    kinds = {
        tuf_exc.UnsignedMetadataError: "signature check failed",
        tuf_exc.BadVersionNumberError: "version check failed (rollback or mix-and-match)",
        tuf_exc.EqualVersionNumberError: "version check failed (same version, different content)",
        tuf_exc.ExpiredMetadataError: "metadata has expired (freeze)",
        tuf_exc.LengthOrHashMismatchError: "length or hash mismatch (tampered file)",
        tuf_exc.DownloadLengthMismatchError: "file larger than allowed",
        tuf_exc.DownloadHTTPError: "download failed",
        tuf_exc.SlowRetrievalError: "download too slow",
        tuf_exc.DownloadError: "download failed",
        tuf_exc.RepositoryError: "repository metadata refused",
    }
    for cls, text in kinds.items():
        if isinstance(exc, cls):
            return f"{text}: {exc}".replace("\n", " ")
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _metadata_urls(url: str) -> tuple[str, str]:
    base = url.rstrip("/") + "/"
    return base + "metadata/", base + "targets/"


def _fetcher_for(url: str) -> FetcherInterface | None:
    scheme = urlparse(url).scheme
    if scheme == "file":
        return LocalFetcher()
    if scheme in ("http", "https"):
        return None  # ngclient's default urllib3 fetcher
    raise SyncError(f"registry.url {url!r}: scheme must be https, http or file")


def _reset_cache_if_new_root(cache: Path, pinned: bytes) -> None:
    """A different pinned root means a different repository: forget the old one's metadata."""
    marker = cache / "pinned-root.sha256"
    digest = hashlib.sha256(pinned).hexdigest()
    if marker.exists() and marker.read_text().strip() == digest:
        return
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    marker.write_text(digest + "\n")


def sync_once(url: str, pinned_root: str | Path, registry_dir: str | Path) -> SyncResult:
    """One update round; raises SyncError (last good registry untouched) when anything is refused."""
    if not url:
        raise SyncError("registry.url is empty: nothing to sync from")
    if not str(pinned_root):
        raise SyncError("registry.root is empty: pin the consortium's root.json (its 1.root.json)")
    reg_dir = Path(registry_dir)
    reg_dir.mkdir(parents=True, exist_ok=True)
    try:
        pinned = Path(pinned_root).read_bytes()
    except OSError as exc:
        raise SyncError(f"registry.root {pinned_root}: cannot read the pinned root: {exc.strerror}") from None
    cache = reg_dir / "tuf"
    _reset_cache_if_new_root(cache, pinned)
    meta_url, targets_url = _metadata_urls(url)
    # The registry is small: hold every role to sizes far below ngclient's defaults.
    config = UpdaterConfig(timestamp_max_length=16_384, snapshot_max_length=65_536,
                           targets_max_length=262_144, root_max_length=262_144)
    try:
        updater = Updater(str(cache), meta_url, str(cache / "download"), targets_url,
                          fetcher=_fetcher_for(url), config=config, bootstrap=pinned)
        updater.refresh()
        info = updater.get_targetinfo(TARGET_NAME)
        if info is None:
            raise SyncError(f"the repository lists no {TARGET_NAME} target")
        if info.length > model.MAX_REGISTRY_BYTES:
            raise SyncError(f"{TARGET_NAME} of {info.length} bytes is larger than {model.MAX_REGISTRY_BYTES}: refused")
        path = updater.download_target(info, str(cache / "download" / TARGET_NAME))
        body = Path(path).read_bytes()
        expires = trusted_expiry(cache)
        version = Metadata.from_file(str(cache / "targets.json")).signed.version
    except SyncError:
        raise
    except (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError, ValueError) as exc:
        raise SyncError(_reason(exc)) from None
    try:
        reg = model.loads(body, TARGET_NAME)
    except ValueError as exc:
        raise SyncError(f"signed registry refused by validation: {exc}") from None
    target = reg_dir / "registry.json"
    changed = not target.exists() or target.read_bytes() != body
    if changed:
        write_atomic(target, body)
    return SyncResult(version, expires, len(reg.members), changed)


def remove_cache(registry_dir: str | Path) -> None:
    """Forget the trusted metadata (used when a dev box is re-initialised)."""
    shutil.rmtree(Path(registry_dir) / "tuf", ignore_errors=True)


__all__ = ["LocalFetcher", "SyncError", "SyncResult", "remove_cache", "sync_once", "trusted_expiry"]
