"""The Tux Paint download: a real .deb built with dpkg-deb stands in for what apt would fetch."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from helpers import N_USABLE, make_deb, make_stamps_tree

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
    with pytest.raises(DownloadError, match="dpkg -x"):
        tuxpaint.fetch_package("p", tmp_path / "out", deb=str(broken))
    assert not (tmp_path / "out" / "unpacked").exists()
