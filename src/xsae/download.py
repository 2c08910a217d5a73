"""Resumable, verified HTTP downloads for the paper-scale datasets, plus safe archive handling.

One file is fetched into ``<dest>.part`` and renamed onto ``dest`` only once it is complete and its
checksum (when one is known) matches, so a file under its final name is always whole. An interrupted
``.part`` is resumed with an HTTP Range request, by this run's retries or by the next run. The sha256
of every file is computed while streaming, so sources that publish no checksum are still recorded.
`download_many` runs a bounded thread pool over many items and returns a report of which items
failed and why: URL-list datasets always lose some images, and the manifest must say which.

HTTP client: ``requests`` (on top of urllib3) rather than bare urllib3, because it reads the proxy and
CA-bundle settings of the environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) that cluster nodes
often need, while ``resp.raw`` still gives urllib3's undecoded byte stream so Range offsets are exact.
It is already installed through snakemake and papermill; pyproject.toml should declare it.

Decision, URL-list image datasets (LAION subset ~70k rows, CC-3M ~3.3M rows): use this downloader,
not img2dataset. img2dataset is built to resize and shard into webdataset/parquet/numbered files,
while our manifest contract is one original file per image named by its sample id, with its sha256
and a per-item failure reason; with img2dataset we would switch its resizing off and translate its
shard numbering and parquet status columns back into that contract. Its dependencies are heavy and
capped (1.47.0 requires pandas<3, albumentations<2, webdataset<0.3, opencv-python-headless, wandb), and
pandas<3 already conflicts with this environment (pandas 3). Resumption here is per item (files already
present with the right checksum/size are skipped, partial files are resumed) rather than per shard, and
the whole path is tested against a loopback server. What would change this: needing many millions of
URLs at img2dataset's throughput (processes plus threads; its README quotes 100M URLs in 20 h on one
machine, while a thread pool here at an estimated ~250 images/s needs ~4 h for CC-3M), or wanting
resized webdataset shards for training; then run img2dataset in its own environment with
output_format=files and resize_mode=no, and convert its parquet status records into our manifest.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import random
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath, PureWindowsPath

import requests
import urllib3

from xsae.errors import DownloadError
from xsae.io import atomic_path, sha256_file
from xsae.progress import progress as progress_bar

_CHUNK = 1 << 20
#: Longest we ever sleep between attempts, whatever Retry-After asks for.
_MAX_WAIT = 600.0
#: Statuses worth retrying besides 5xx: request timeout and rate limiting.
_RETRY_STATUSES = frozenset({408, 429})
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_USER_AGENT = "xsae-download/0.1 (research dataset download; python-requests)"
_REDOWNLOAD = "Delete it and rerun to download it again."
_sleep = time.sleep  # tests replace this to record delays without waiting


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status; `status` goes into the failure report."""

    def __init__(self, message: str, *, url: str, status: int):
        super().__init__(message)
        self.url = url
        self.status = status


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str
    md5: str
    attempts: int
    resumed: bool


@dataclass(frozen=True)
class DownloadItem:
    url: str
    dest: str | os.PathLike
    sha256: str | None = None
    size: int | None = None
    key: str | None = None


class _Retryable(Exception):
    """A transient failure: connection lost, timeout, 5xx, 408 or 429."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _LocalIOError(Exception):
    """Writing the `.part` file failed: a problem of this machine, never retried."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


@dataclass
class _State:
    attempts: int = 0
    resumed: bool = False
    validator: str | None = None


class _Hashes:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.md5.update(data)

    @classmethod
    def of_prefix(cls, path: Path, length: int) -> _Hashes:
        """Hash the bytes already in a `.part`: hash states do not survive a run, so a resume rereads them."""
        hashes = cls()
        if length:
            with open(path, "rb") as handle:
                left = length
                while left and (block := handle.read(min(_CHUNK, left))):
                    hashes.update(block)
                    left -= len(block)
        return hashes


def part_path(dest: str | os.PathLike) -> Path:
    """Where a download of `dest` is staged until it is complete and verified."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def new_session(pool_size: int = 10) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = _USER_AGENT
    return session


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: either a number or an HTTP date."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _delay(attempt: int, backoff: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter, so many workers hitting one host do not retry in lockstep."""
    wait_s = min(_MAX_WAIT, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        wait_s = max(wait_s, retry_after)
    return min(wait_s, _MAX_WAIT)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from `bytes 100-199/200` or `bytes */200`; None where not given."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = int(span.split("-")[0]) if span != "*" and span.split("-")[0].isdigit() else None
    return start, int(total) if total.isdigit() else None


def _attempt(
    url: str,
    part: Path,
    session: requests.Session,
    state: _State,
    *,
    expected_size: int | None,
    timeout: float,
    progress: bool,
    on_progress: Callable[[int], None] | None,
) -> tuple[int, _Hashes]:
    """One request: resume `part` where possible, append the body and return (size, hashes)."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size and offset:
        return offset, _Hashes.of_prefix(part, offset)
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.validator:
            headers["If-Range"] = state.validator
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:
        raise DownloadError(f"Cannot request {url}: {exc}") from exc
    with response:
        status = response.status_code
        if status == 416 and offset:
            _, total = _content_range(response.headers.get("Content-Range"))
            if total == offset:  # the previous run had already received everything
                return offset, _Hashes.of_prefix(part, offset)
            part.unlink(missing_ok=True)
            raise _Retryable(f"HTTP 416 for a resume at byte {offset}; restarting from zero", status=416)
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retryable(
                f"HTTP {status} {response.reason}",
                status=status,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status not in (200, 206):
            raise HTTPStatusError(
                f"{url} answered HTTP {status} {response.reason}; not retried, as this will not change by "
                "waiting. Check the URL (the source may have moved or need a login).",
                url=url,
                status=status,
            )
        total = None
        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"asked to resume at byte {offset}, server sent byte {start}; restarting")
            state.resumed = state.resumed or offset > 0
        else:  # 200: the server ignored Range (or no resume was asked for); start from zero
            offset = 0
            state.resumed = False
        state.validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        length = response.headers.get("Content-Length")
        if total is None and length is not None and length.isdigit():
            total = offset + int(length)
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} serves {total} bytes but {expected_size} were expected for {part.with_suffix('')}; "
                "the source changed or the expected size is wrong."
            )
        hashes = _Hashes.of_prefix(part, offset)
        received = offset
        chunks = response.raw.stream(_CHUNK, decode_content=False)
        bar = progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=not progress, leave=False,
        )
        try:
            with open(part, "ab" if offset else "wb") as handle:
                while True:
                    try:
                        chunk = next(chunks, None)
                    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                        raise _Retryable(f"connection lost after {received} bytes: {exc}") from exc
                    if chunk is None:
                        break
                    handle.write(chunk)
                    hashes.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if on_progress is not None:
                        on_progress(len(chunk))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise _LocalIOError(exc) from exc
        finally:
            bar.close()
    if total is not None and received < total:
        raise _Retryable(f"connection closed after {received} of {total} bytes")
    return received, hashes


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    expected_size: int | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
    session: requests.Session | None = None,
    progress: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> DownloadResult:
    """Fetch `url` to `dest` (overwriting it), resuming `dest.part` and verifying before the rename.

    Retries (up to `retries` more attempts) connection errors, timeouts, 5xx, 408 and 429, honouring
    Retry-After; other HTTP errors fail at once. On a checksum or size mismatch the `.part` is
    deleted. On a full disk the `.part` is kept: the files here are gigabytes, and once space is
    freed the next run resumes from it instead of fetching everything again.
    """
    dest = Path(dest)
    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session if session is not None else new_session()
    state = _State()
    try:
        while True:
            state.attempts += 1
            try:
                size, hashes = _attempt(
                    url, part, session, state, expected_size=expected_size, timeout=timeout,
                    progress=progress, on_progress=on_progress,
                )
                break
            except _Retryable as exc:
                if state.attempts > retries:
                    kept = ""
                    if part.exists():
                        kept = f" The {part.stat().st_size} bytes in {part} are kept; a rerun resumes."
                    message = f"Gave up on {url} after {state.attempts} attempts: {exc}.{kept}"
                    if exc.status is not None:
                        raise HTTPStatusError(message, url=url, status=exc.status) from exc
                    raise DownloadError(message) from exc
                _sleep(_delay(state.attempts, backoff, exc.retry_after))
            except _LocalIOError as exc:
                if exc.error.errno in _DISK_FULL:
                    raise DownloadError(
                        f"The disk is full (or the quota exceeded) while writing {part} from {url}: {exc}. "
                        f"Free space on the file system holding {dest.parent} and rerun; the partial file "
                        f"{part} is kept and the download resumes from it (delete it to reclaim its space)."
                    ) from exc
                raise DownloadError(f"Cannot write {part} while downloading {url}: {exc}") from exc
    finally:
        if own_session:
            session.close()
    actual = {"sha256": hashes.sha256.hexdigest(), "md5": hashes.md5.hexdigest()}
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{dest}: received {size} bytes from {url} but expected {expected_size}; the partial file was "
            "deleted. Rerun to download it again; if this repeats the source changed."
        )
    for name, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None and expected.strip().lower() != actual[name]:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"Checksum mismatch for {dest} (from {url}): expected {name} {expected.strip().lower()}, "
                f"got {actual[name]}. The downloaded file was deleted. Rerun to download it again; if this "
                "repeats the source changed and the expected checksum must be updated."
            )
    os.replace(part, dest)
    return DownloadResult(dest, size, actual["sha256"], actual["md5"], state.attempts, state.resumed)


# --------------------------------------------------------------------------------------------- many


@dataclass(slots=True)
class ItemOutcome:
    """One row of the failure report; `outcome` is downloaded, skipped or failed."""

    key: str
    url: str
    dest: str
    outcome: str
    http_status: int | None = None
    reason: str = ""
    bytes: int = 0
    sha256: str = ""
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"


@dataclass
class DownloadReport:
    """What `download_many` did per item; written beside the data so the manifest can say what is missing."""

    items: list[ItemOutcome] = field(default_factory=list)

    @property
    def succeeded(self) -> list[ItemOutcome]:
        return [item for item in self.items if item.ok]

    @property
    def failed(self) -> list[ItemOutcome]:
        return [item for item in self.items if not item.ok]

    def summary(self) -> dict[str, int]:
        counts = {"total": len(self.items), "downloaded": 0, "skipped": 0, "failed": 0}
        for item in self.items:
            counts[item.outcome] += 1
        return counts

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically as CSV (`.csv`) or JSON (anything else)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".csv":
                with open(tmp, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(ItemOutcome)])
                    writer.writeheader()
                    writer.writerows(asdict(item) for item in self.items)
            else:
                payload = {"summary": self.summary(), "items": [asdict(item) for item in self.items]}
                tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> DownloadReport:
        path = Path(path)
        if path.suffix.lower() != ".csv":
            rows = json.loads(path.read_text(encoding="utf-8"))["items"]
            return cls([ItemOutcome(**row) for row in rows])
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            row["http_status"] = int(row["http_status"]) if row["http_status"] else None
            row["bytes"] = int(row["bytes"])
            row["attempts"] = int(row["attempts"])
        return cls([ItemOutcome(**row) for row in rows])


def _already_present(item: DownloadItem, dest: Path) -> tuple[bool, str, str]:
    """(usable, sha256, why not) for a file already at `dest` from an earlier run."""
    size = dest.stat().st_size
    if item.size is not None and size != item.size:
        return False, "", f"existing file has {size} bytes, expected {item.size}"
    digest = sha256_file(dest)
    if item.sha256 is not None and digest != item.sha256.strip().lower():
        return False, digest, "existing file has the wrong sha256"
    return True, digest, ""


def download_many(
    items: Iterable[DownloadItem],
    *,
    workers: int = 8,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
    progress: bool = True,
    desc: str = "download",
    session_factory: Callable[[], requests.Session] | None = None,
) -> DownloadReport:
    """Download every item with a bounded thread pool; a failed item is recorded, never raised.

    Items whose `dest` already holds the expected size/sha256 are skipped (a file under its final
    name is complete by construction, so one without a checksum is trusted). The progress bar counts
    bytes when every item has a size and files otherwise. Very long lists (CC-3M) are best fed in
    shards, one report per shard, to bound memory and make progress durable.
    """
    items = list(items)
    factory = session_factory or (lambda: new_session(pool_size=max(workers, 1)))
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()
    by_bytes = bool(items) and all(item.size is not None for item in items)
    bar = progress_bar(
        total=sum(item.size for item in items) if by_bytes else len(items),
        unit="B" if by_bytes else "file", unit_scale=by_bytes, unit_divisor=1024 if by_bytes else 1000,
        desc=desc, disable=not progress, smoothing=0.05,
    )

    failures = 0

    def advance(n: int, failed: bool = False) -> None:
        nonlocal failures
        with lock:
            if failed:
                failures += 1
                bar.set_postfix(failed=failures, refresh=False)
            bar.update(n)

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = factory()
            with lock:
                sessions.append(local.session)
        return local.session

    def run(item: DownloadItem) -> ItemOutcome:
        dest = Path(item.dest)
        outcome = ItemOutcome(item.key or str(dest), item.url, str(dest), "failed")
        sent = 0
        try:
            if dest.is_file():
                usable, digest, why = _already_present(item, dest)
                if usable:
                    outcome.outcome, outcome.sha256, outcome.bytes = "skipped", digest, dest.stat().st_size
                    advance(outcome.bytes if by_bytes else 1)
                    return outcome
                dest.unlink()  # known bad: never leave it under its final name
                outcome.reason = f"replaced: {why}"

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                if by_bytes:
                    advance(n)

            result = download_file(
                item.url, dest, sha256=item.sha256, expected_size=item.size, retries=retries,
                backoff=backoff, timeout=timeout, session=session(), progress=False, on_progress=count,
            )
            outcome.outcome, outcome.sha256, outcome.bytes = "downloaded", result.sha256, result.bytes
            outcome.attempts = result.attempts
            advance((result.bytes - sent) if by_bytes else 1)
        except Exception as exc:  # one bad item must not stop the others
            outcome.outcome, outcome.reason = "failed", str(exc) or type(exc).__name__
            outcome.http_status = getattr(exc, "status", None)
            advance((item.size or 0) - sent if by_bytes else 1, failed=True)
        return outcome

    outcomes: list[ItemOutcome | None] = [None] * len(items)
    seen: dict[Path, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="xsae-dl") as pool:
            pending: dict[Future, int] = {}
            for index, item in enumerate(items):
                dest = Path(os.path.abspath(item.dest))
                if dest in seen:  # two writers on one .part would corrupt it
                    outcomes[index] = ItemOutcome(
                        item.key or str(item.dest), item.url, str(item.dest), "failed",
                        reason=f"same destination as item {seen[dest]}",
                    )
                    continue
                seen[dest] = index
                while len(pending) >= 4 * max(workers, 1):
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcomes[pending.pop(future)] = future.result()
                pending[pool.submit(run, item)] = index
            for future, index in pending.items():
                outcomes[index] = future.result()
    finally:
        bar.close()
        for each in sessions:
            each.close()
    return DownloadReport([outcome for outcome in outcomes if outcome is not None])


# ------------------------------------------------------------------------------------------ archives

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DownloadError(f"{path} is neither a zip nor a tar archive (or it is damaged). {_REDOWNLOAD}")


def _corrupt(path: Path, exc: BaseException) -> DownloadError:
    if isinstance(exc, tarfile.FilterError):  # tarfile's own safety net caught what our checks did not
        return DownloadError(f"{path} has an unsafe member ({exc}); refusing to unpack it.")
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return DownloadError(f"The disk is full while unpacking {path}: {exc}. Free space and rerun.")
    return DownloadError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}). {_REDOWNLOAD}")


_BROKEN = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


def _check_tar_end(tar: tarfile.TarFile, path: Path) -> None:
    """Require the end-of-archive zero blocks: tarfile stops silently at a header cut at a block edge."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    marker = fileobj.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise DownloadError(f"{path} is truncated: its end-of-archive marker is missing. {_REDOWNLOAD}")
    while fileobj.read(_CHUNK):  # read to the end so gzip/bz2/xz check their trailer and CRC
        pass


def verify_archive(path: str | os.PathLike) -> None:
    """Read every member of a zip or tar(.gz/.bz2/.xz) so a truncated download fails before unpacking."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"{path} does not exist; rerun the download.")
    try:
        if _kind(path) == "zip":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise DownloadError(f"{path} is corrupt: member '{bad}' fails its CRC check. {_REDOWNLOAD}")
            return
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    data = tar.extractfile(member)
                    while data.read(_CHUNK):
                        pass
            _check_tar_end(tar, path)
    except DownloadError:
        raise
    except _BROKEN as exc:
        raise _corrupt(path, exc) from exc


def _unsafe(name: str) -> bool:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or bool(windows.drive) or name.startswith("\\") or ".." in posix.parts \
        or ".." in windows.parts


def _safe_tar_members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        if _unsafe(member.name):
            raise DownloadError(
                f"{path} has a member with an unsafe path '{member.name}'; refusing to unpack it."
            )
        if (member.issym() or member.islnk()) and _unsafe(member.linkname):
            raise DownloadError(
                f"{path} has a link '{member.name}' -> '{member.linkname}' pointing outside the archive; "
                "refusing to unpack it."
            )
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise DownloadError(f"{path} has a special file '{member.name}'; refusing to unpack it.")
        yield member


def extract_archive(path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Unpack into a temporary folder beside `dest_dir`, then rename it onto `dest_dir` (replacing it).

    Members with absolute paths, `..` components or links leaving the archive are refused, so a
    hostile or broken archive can never write outside `dest_dir`; on any error `dest_dir` is untouched.
    """
    path, dest_dir = Path(path), Path(dest_dir)
    if not path.is_file():
        raise DownloadError(f"{path} does not exist; rerun the download.")
    kind = _kind(path)
    try:
        with atomic_path(dest_dir, directory=True) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private; the data folder should be readable like any other
            if kind == "zip":
                with zipfile.ZipFile(path) as archive:
                    for name in archive.namelist():
                        if _unsafe(name):
                            raise DownloadError(
                                f"{path} has a member with an unsafe path '{name}'; refusing to unpack it."
                            )
                    archive.extractall(tmp)
            else:
                with tarfile.open(path, "r:*") as tar:
                    tar.extractall(tmp, members=_safe_tar_members(tar, path), filter="data")
                    _check_tar_end(tar, path)
    except DownloadError:
        raise
    except _BROKEN as exc:
        raise _corrupt(path, exc) from exc
    return dest_dir


__all__ = [
    "DownloadItem",
    "DownloadReport",
    "DownloadResult",
    "HTTPStatusError",
    "ItemOutcome",
    "download_file",
    "download_many",
    "extract_archive",
    "new_session",
    "part_path",
    "verify_archive",
]
