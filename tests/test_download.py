"""xsae.download against a scripted server on 127.0.0.1: resume, retries, checksums, reports, archives."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import tarfile
import zipfile

import pytest
from http_fixtures import loopback_server

from xsae import download
from xsae.download import (
    DownloadItem,
    DownloadReport,
    download_file,
    download_many,
    extract_archive,
    part_path,
    verify_archive,
)
from xsae.errors import DownloadError

#: Fast settings so retries cost milliseconds; every socket wait is bounded.
FAST = {"backoff": 0.001, "timeout": 5, "progress": False}


def _body(n: int, seed: int = 0) -> bytes:
    """Incompressible bytes, so archives and partial bodies have realistic sizes."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


@pytest.fixture(autouse=True)
def _bounded_and_local(monkeypatch):
    """Fail any test that hangs, and keep proxy settings from routing loopback requests elsewhere."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def _timeout(signum, frame):
        raise TimeoutError("test exceeded 20 s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def server():
    with loopback_server() as srv:
        yield srv


@pytest.fixture
def sleeps(monkeypatch):
    """Record backoff delays instead of sleeping."""
    delays: list[float] = []
    monkeypatch.setattr(download, "_sleep", delays.append)
    return delays


def test_plain_download_records_sha256_and_md5(server, tmp_path):
    body = _body(300_000)
    url = server.add("/a.bin", body)
    result = download_file(url, tmp_path / "sub" / "a.bin", **FAST)
    assert (tmp_path / "sub" / "a.bin").read_bytes() == body
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.md5 == hashlib.md5(body).hexdigest()
    assert (result.bytes, result.attempts, result.resumed) == (len(body), 1, False)
    assert result.path == tmp_path / "sub" / "a.bin"
    assert not part_path(result.path).exists()
    assert server.requests_for("/a.bin")[0].headers.get("Accept-Encoding") == "identity"


def test_matching_checksums_pass(server, tmp_path):
    body = _body(50_000, seed=1)
    url = server.add("/b.bin", body)
    sha, md5 = hashlib.sha256(body).hexdigest(), hashlib.md5(body).hexdigest()
    dest = tmp_path / "b.bin"
    result = download_file(url, dest, sha256=sha.upper(), md5=md5, expected_size=len(body), **FAST)
    assert result.sha256 == sha and result.md5 == md5
    assert (tmp_path / "b.bin").read_bytes() == body


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    body = _body(50_000, seed=2)
    url = server.add("/c.bin", body)
    dest = tmp_path / "c.bin"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, sha256=wrong, **FAST)
    message = str(info.value)
    assert str(dest) in message and wrong in message and hashlib.sha256(body).hexdigest() in message
    assert not dest.exists() and not part_path(dest).exists()
    assert len(server.requests_for("/c.bin")) == 1, "a checksum mismatch is not retried"


def test_dropped_connections_resume_with_range(server, tmp_path, sleeps):
    body = _body(400_000, seed=3)
    url = server.add("/d.bin", body, drop_first=2, etag='"v1"')
    result = download_file(url, tmp_path / "d.bin", sha256=hashlib.sha256(body).hexdigest(), **FAST)
    assert (tmp_path / "d.bin").read_bytes() == body
    assert result.resumed is True and result.attempts == 3
    seen = server.requests_for("/d.bin")
    assert [s.headers.get("Range") for s in seen] == [None, "bytes=200000-", "bytes=300000-"]
    assert seen[1].headers.get("If-Range") == '"v1"'
    assert len(sleeps) == 2 and all(0 < d < 0.01 for d in sleeps)


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, sleeps):
    body = _body(200_000, seed=4)
    url = server.add("/e.bin", body, drop_first=1, ranges=False)
    result = download_file(url, tmp_path / "e.bin", **FAST)
    assert (tmp_path / "e.bin").read_bytes() == body
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.resumed is False and result.attempts == 2
    assert server.requests_for("/e.bin")[1].headers.get("Range") == "bytes=100000-"


def test_complete_part_from_an_earlier_run_is_finished_via_416(server, tmp_path):
    body = _body(10_000, seed=5)
    url = server.add("/f.bin", body)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(body)  # the earlier run died between the last byte and the rename
    result = download_file(url, dest, **FAST)
    assert dest.read_bytes() == body and result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.resumed is False and result.attempts == 1
    assert server.requests_for("/f.bin")[0].headers.get("Range") == "bytes=10000-"


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_are_not_retried(server, tmp_path, sleeps, status):
    url = server.add("/missing.bin", status=status)
    with pytest.raises(download.HTTPStatusError) as info:
        download_file(url, tmp_path / "missing.bin", **FAST)
    assert url in str(info.value) and str(status) in str(info.value)
    assert info.value.status == status
    assert len(server.requests_for("/missing.bin")) == 1 and sleeps == []
    assert not (tmp_path / "missing.bin").exists()


def test_503_twice_then_success(server, tmp_path, sleeps):
    body = _body(20_000, seed=6)
    url = server.add("/g.bin", body, fail_first=2)
    result = download_file(url, tmp_path / "g.bin", **FAST)
    assert (tmp_path / "g.bin").read_bytes() == body
    assert result.attempts == 3 and len(server.requests_for("/g.bin")) == 3
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0]  # doubles; the jitter is at most half


def test_429_honours_retry_after(server, tmp_path, sleeps):
    url = server.add("/h.bin", b"x" * 100, fail_first=1, fail_status=429, retry_after="7")
    download_file(url, tmp_path / "h.bin", **FAST)
    assert sleeps == [7.0]


def test_persistent_503_gives_up_with_status(server, tmp_path, sleeps):
    url = server.add("/down.bin", b"x", fail_first=100)
    with pytest.raises(download.HTTPStatusError, match="after 3 attempts") as info:
        download_file(url, tmp_path / "down.bin", retries=2, **FAST)
    assert info.value.status == 503 and len(server.requests_for("/down.bin")) == 3


def test_download_many_reports_failures_and_round_trips(server, tmp_path):
    bodies = {f"/img/{i:03d}.jpg": _body(5_000 + i, seed=100 + i) for i in range(20)}
    missing = {"/img/003.jpg", "/img/011.jpg", "/img/017.jpg"}
    items = []
    for path, body in bodies.items():
        url = server.add(path, body, status=404 if path in missing else 200)
        items.append(DownloadItem(url, tmp_path / "out" / path.split("/")[-1], key=f"sample-{path[5:8]}"))
    report = download_many(items, workers=4, **FAST)
    assert report.summary() == {"total": 20, "downloaded": 17, "skipped": 0, "failed": 3}
    assert {f.key for f in report.failed} == {"sample-003", "sample-011", "sample-017"}
    assert all(f.http_status == 404 and "404" in f.reason for f in report.failed)
    assert [o.key for o in report.items] == [f"sample-{i:03d}" for i in range(20)], "input order kept"
    for ok in report.succeeded:
        body = bodies[f"/img/{ok.key[-3:]}.jpg"]
        assert ok.sha256 == hashlib.sha256(body).hexdigest() and ok.bytes == len(body)
        assert (tmp_path / "out" / f"{ok.key[-3:]}.jpg").read_bytes() == body
    for name in ("report.json", "report.csv"):
        written = report.write(tmp_path / name)
        assert DownloadReport.read(written) == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "report.csv", "report.json"], "no temp files"


def test_download_many_skips_files_already_present(server, tmp_path):
    bodies = {f"/p/{i}.bin": _body(1_000, seed=200 + i) for i in range(4)}
    urls = {path: server.add(path, body) for path, body in bodies.items()}
    dest = {path: tmp_path / path.split("/")[-1] for path in bodies}
    sha = {path: hashlib.sha256(body).hexdigest() for path, body in bodies.items()}
    dest["/p/0.bin"].write_bytes(bodies["/p/0.bin"])  # right checksum: skipped
    dest["/p/1.bin"].write_bytes(bodies["/p/1.bin"])  # right size, no checksum given: skipped
    dest["/p/2.bin"].write_bytes(b"stale" * 200)  # same size, wrong checksum: fetched again
    items = [
        DownloadItem(urls["/p/0.bin"], dest["/p/0.bin"], sha256=sha["/p/0.bin"]),
        DownloadItem(urls["/p/1.bin"], dest["/p/1.bin"], size=1_000),
        DownloadItem(urls["/p/2.bin"], dest["/p/2.bin"], sha256=sha["/p/2.bin"], size=1_000),
        DownloadItem(urls["/p/3.bin"], dest["/p/3.bin"], sha256=sha["/p/3.bin"]),
    ]
    report = download_many(items, workers=2, **FAST)
    assert [o.outcome for o in report.items] == ["skipped", "skipped", "downloaded", "downloaded"]
    assert [o.sha256 for o in report.items] == [sha[p] for p in bodies]
    assert server.requests_for("/p/0.bin") == [] and server.requests_for("/p/1.bin") == []
    assert len(server.requests_for("/p/2.bin")) == 1 and dest["/p/2.bin"].read_bytes() == bodies["/p/2.bin"]
    assert "wrong sha256" in report.items[2].reason


# ------------------------------------------------------------------------------------------ archives


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _tar(path, members: dict[str, bytes], mode: str = "w:gz"):
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _truncate(path, fraction: float = 0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


MEMBERS = {"images/a.jpg": _body(40_000, 1), "images/b.jpg": _body(40_000, 2), "labels.txt": b"a\nb\n"}


@pytest.mark.parametrize(
    ("name", "make"),
    [("data.zip", _zip), ("data.tar.gz", _tar), ("data.tar", lambda p, m: _tar(p, m, "w"))],
)
def test_truncated_archives_are_detected(tmp_path, name, make):
    archive = make(tmp_path / name, MEMBERS)
    verify_archive(archive)  # whole: passes
    _truncate(archive)
    with pytest.raises(DownloadError, match="Delete it and rerun") as info:
        verify_archive(archive)
    assert str(archive) in str(info.value)
    with pytest.raises(DownloadError, match=name):
        extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "no partial extraction left behind"


def test_tar_cut_at_a_member_boundary_is_detected(tmp_path):
    archive = _tar(tmp_path / "cut.tar", MEMBERS, "w")
    data = archive.read_bytes()
    archive.write_bytes(data[: 512 + 40_448])  # exactly the first member: tarfile alone would not notice
    with pytest.raises(DownloadError, match="end-of-archive marker"):
        verify_archive(archive)


@pytest.mark.parametrize(("name", "make"), [("good.zip", _zip), ("good.tar.gz", _tar)])
def test_good_archive_extracts_atomically(tmp_path, name, make):
    archive = make(tmp_path / name, MEMBERS)
    out = tmp_path / "data" / "unpacked"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("from an earlier run")
    assert extract_archive(archive, out) == out
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["images/a.jpg", "images/b.jpg", "labels.txt"]
    assert all((out / n).read_bytes() == data for n, data in MEMBERS.items())
    assert os.listdir(out.parent) == ["unpacked"], "the temporary folder was renamed, not left beside"


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
@pytest.mark.parametrize(("name", "make"), [("bad.zip", _zip), ("bad.tar.gz", _tar)])
def test_path_traversal_is_refused(tmp_path, name, make, evil):
    archive = make(tmp_path / name, {"fine.txt": b"fine", evil: b"evil"})
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match="unsafe path"):
        extract_archive(archive, out)
    assert not out.exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert os.listdir(tmp_path / "deep") == []


def test_tar_link_out_of_the_archive_is_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("innocent")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(DownloadError, match="pointing outside"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- disk full


class _FillingFile:
    """A real file that accepts `room` bytes and then fails like a full disk."""

    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            self._handle.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_disk_full_leaves_no_dest_and_the_next_run_resumes(server, tmp_path, monkeypatch):
    body = _body(3_000_000, seed=7)
    url = server.add("/big.bin", body)
    dest = tmp_path / "big.bin"
    real_open = open
    with monkeypatch.context() as patch, pytest.raises(DownloadError) as info:
        patch.setattr(download, "open", lambda *a, **k: _FillingFile(real_open(*a, **k), 1_500_000),
                      raising=False)
        download_file(url, dest, sha256=hashlib.sha256(body).hexdigest(), **FAST)
    message = str(info.value)
    assert "disk is full" in message and str(part_path(dest)) in message and str(tmp_path) in message
    assert not dest.exists()
    assert part_path(dest).read_bytes() == body[:1_500_000], "the partial file is kept for a resume"
    assert len(server.requests_for("/big.bin")) == 1, "a full disk is not retried"

    # space freed: the rerun resumes instead of starting over
    result = download_file(url, dest, sha256=hashlib.sha256(body).hexdigest(), **FAST)
    assert dest.read_bytes() == body and result.resumed is True
    assert server.requests_for("/big.bin")[-1].headers.get("Range") == "bytes=1500000-"
