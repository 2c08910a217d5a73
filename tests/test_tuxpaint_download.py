"""The Tux Paint download: a real .deb built with dpkg-deb stands in for what apt would fetch."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile

import pytest
from helpers import N_USABLE, make_deb, make_stamps_tree
from http_fixtures import loopback_server

from xsae.datasets import tuxpaint
from xsae.errors import DownloadError

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


@pytest.fixture
def deb(tmp_path):
    tree = make_stamps_tree(tmp_path / "tree")
    return make_deb(tree, tmp_path / "stamps.deb")


def test_local_deb_is_unpacked_and_recorded(deb, tmp_path):
    out = tmp_path / "out"
    record = tuxpaint.fetch_package("tuxpaint-stamps-fixture", out, deb=str(deb))
    assert record["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert record["version"] == "1.0-1" and record["source"] == "deb"
    stamps, skipped = tuxpaint.scan_stamps(tuxpaint.stamps_root(out / "unpacked"))
    assert len(stamps) == N_USABLE
    assert skipped == {"glyph": 2, "no_caption": 1}
    assert deb.is_file(), "a user-provided .deb must never be deleted"


def test_checksum_mismatch_fails_and_writes_nothing(deb, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="does not match the expected") as info:
        tuxpaint.fetch_package("tuxpaint-stamps-fixture", out, deb=str(deb), expected_sha256="0" * 64)
    assert str(deb) in str(info.value)
    assert not (out / "unpacked").exists()


def test_matching_checksum_passes(deb, tmp_path):
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    record = tuxpaint.fetch_package("p", tmp_path / "out", deb=str(deb), expected_sha256=digest)
    assert record["sha256"] == digest


def test_apt_download_through_a_fake_apt_get(deb, tmp_path, monkeypatch):
    """The apt path runs `apt-get download` in a staging folder and removes the staging copy."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "apt-get").write_text(
        f"#!/bin/sh\n[ \"$1\" = download ] && cp {deb} ./$2_1.0-1_all.deb\nexit 0\n")
    (fake_bin / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{__import__('os').environ['PATH']}")
    out = tmp_path / "out"
    record = tuxpaint.fetch_package("tuxpaint-stamps-fixture", out)
    assert record["source"] == "apt-get download"
    assert record["deb"] == "tuxpaint-stamps-fixture_1.0-1_all.deb"
    assert (out / "unpacked" / tuxpaint.STAMPS_SUBDIR).is_dir()
    assert not (out / ".apt").exists()


def test_missing_apt_says_how_to_provide_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(tuxpaint.shutil, "which", lambda name: None)
    with pytest.raises(DownloadError) as info:
        tuxpaint.fetch_package("tuxpaint-stamps-default", tmp_path / "out")
    message = str(info.value)
    assert "apt-get is not available" in message
    assert "datasets.<name>.deb" in message and "datasets.<name>.unpacked" in message
    assert "datasets.<name>.deb_url" in message
    assert not (tmp_path / "out" / "unpacked").exists()


def test_unpacked_folder_option(tmp_path):
    tree = make_stamps_tree(tmp_path / "tree")
    record = tuxpaint.fetch_package("p", tmp_path / "out", unpacked=str(tree))
    assert record["source"] == "unpacked"
    assert len(tuxpaint.scan_stamps(tuxpaint.stamps_root(tmp_path / "out/unpacked"))[0]) == N_USABLE


def test_unpacked_folder_of_the_wrong_shape_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="usr/share/tuxpaint/stamps"):
        tuxpaint.fetch_package("p", tmp_path / "out", unpacked=str(tmp_path / "empty"))


def test_truncated_deb_fails_cleanly(deb, tmp_path):
    broken = tmp_path / "broken.deb"
    broken.write_bytes(deb.read_bytes()[: deb.stat().st_size // 2])
    with pytest.raises(DownloadError, match="truncated"):
        tuxpaint.fetch_package("p", tmp_path / "out", deb=str(broken))
    assert not (tmp_path / "out" / "unpacked").exists()


def ar_archive(members: dict[str, bytes]) -> bytes:
    """A .deb's container format (System V ar), written by hand."""
    out = [b"!<arch>\n"]
    for name, body in members.items():
        out.append(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(body):<10}`\n".encode())
        out.append(body + (b"\n" if len(body) % 2 else b""))
    return b"".join(out)


def tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_a_corrupt_data_archive_and_a_path_outside_the_folder_are_refused(tmp_path):
    control = tar_xz({"./control": b"Package: p\nVersion: 2-1\n"})
    good = tar_xz({"./usr/share/tuxpaint/stamps/a.txt": b"A cat."})
    deb = tmp_path / "ok.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": control, "data.tar.xz": good}))
    tuxpaint.unpack_deb(deb, tmp_path / "ok")
    assert (tmp_path / "ok/usr/share/tuxpaint/stamps/a.txt").read_text() == "A cat."
    assert tuxpaint.deb_version(deb) == "2-1"

    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 8] = b"\0" * 8
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": control,
                                "data.tar.xz": bytes(corrupt)}))
    with pytest.raises(DownloadError, match="corrupt"):
        tuxpaint.unpack_deb(deb, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    escape = tar_xz({"../outside.txt": b"x"})
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": control, "data.tar.xz": escape}))
    with pytest.raises(DownloadError):
        tuxpaint.unpack_deb(deb, tmp_path / "escape")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "escape").exists()


def test_without_apt_the_deb_comes_from_the_archive_url(deb, tmp_path, monkeypatch):
    """A machine without apt-get (macOS, RHEL-family login nodes) fetches the pinned file itself."""
    monkeypatch.setattr(tuxpaint.shutil, "which", lambda name: None)
    body = deb.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    with loopback_server() as server:
        url = server.add("/debian/pool/main/t/tuxpaint-stamps/stamps_1.0-1_all.deb", body, drop_first=1)
        out = tmp_path / "out"
        record = tuxpaint.fetch_package("p", out, deb_url=url, expected_sha256=digest)
    assert record["source"] == "download" and record["url"] == url and record["sha256"] == digest
    assert record["version"] == "1.0-1"
    assert len(tuxpaint.scan_stamps(tuxpaint.stamps_root(out / "unpacked"))[0]) == N_USABLE
    assert not (out / ".download").exists()
