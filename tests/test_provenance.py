"""xsae.provenance, the `xsae provenance` command and xsae.io's atomic writes and checksums."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from xsae import cli, io, provenance


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def jobs(tmp_path):
    """source.txt -> (rule make_a) a.txt -> (rule make_b) b.csv."""
    src = tmp_path / "downloads" / "source.txt"
    src.parent.mkdir()
    src.write_text("raw data\n", encoding="utf-8")
    a = tmp_path / "work" / "a.txt"
    b = tmp_path / "results" / "b.csv"
    with provenance.job("make_a", [src], [a], params={"scale": 2, "path": Path("/x")},
                        wildcards={"dataset": "tux"}, seed=7) as job:
        a.parent.mkdir()
        a.write_text(src.read_text(encoding="utf-8").upper(), encoding="utf-8")
        job.extra["rows"] = 1
    with provenance.job("make_b", [a], [b], params={}, wildcards={"dataset": "tux", "run": "r1"},
                        seed=None):
        b.parent.mkdir()
        b.write_text("x,y\n1," + a.read_text(encoding="utf-8"), encoding="utf-8")
    return src, a, b


def test_records_exist_and_hold_the_facts(jobs):
    src, a, b = jobs
    assert provenance.record_path(a) == Path(str(a) + ".prov.json")
    assert provenance.record_path(a).is_file() and provenance.record_path(b).is_file()
    assert provenance.read_record(src) is None

    rec = json.loads(provenance.record_path(a).read_text(encoding="utf-8"))
    assert rec == provenance.read_record(a)
    assert rec["rule"] == "make_a"
    assert rec["params"] == {"scale": 2, "path": "/x"}
    assert rec["wildcards"] == {"dataset": "tux"}
    assert rec["seed"] == 7
    assert rec["extra"] == {"rows": 1}
    assert [e["path"] for e in rec["inputs"]] == [str(src)]
    assert [e["path"] for e in rec["outputs"]] == [str(a)]
    assert rec["inputs"][0]["sha256"] == sha(src)
    assert rec["outputs"][0]["sha256"] == sha(a)
    assert rec["outputs"][0]["size"] == a.stat().st_size
    assert rec["outputs"][0]["mtime_ns"] == a.stat().st_mtime_ns

    code = rec["code"]
    assert code["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", code["commit"])
    if code["commit"] is not None:
        assert isinstance(code["dirty"], bool)
    assert "torch" in rec["packages"] and "numpy" in rec["packages"] and "python" in rec["packages"]
    assert rec["packages"]["numpy"] == __import__("numpy").__version__
    started = dt.datetime.fromisoformat(rec["started"])
    finished = dt.datetime.fromisoformat(rec["finished"])
    assert started <= finished
    assert started.tzinfo is not None
    assert rec["device"]["cpu_count"] == os.cpu_count()

    rec_b = provenance.read_record(b)
    assert rec_b["rule"] == "make_b"
    assert rec_b["seed"] is None
    assert rec_b["wildcards"] == {"dataset": "tux", "run": "r1"}
    assert rec_b["inputs"][0] == {"path": str(a), "sha256": sha(a), "size": a.stat().st_size,
                                  "mtime_ns": a.stat().st_mtime_ns}
    assert rec_b["outputs"][0]["sha256"] == sha(b)


def test_record_beside_every_output(tmp_path):
    outs = [tmp_path / "o1.txt", tmp_path / "o2.txt"]
    with provenance.job("two", [], outs):
        for i, out in enumerate(outs):
            out.write_text(str(i) * (i + 1), encoding="utf-8")
    r1, r2 = (provenance.read_record(o) for o in outs)
    assert r1 == r2
    assert [e["sha256"] for e in r1["outputs"]] == [sha(o) for o in outs]


def test_missing_input_is_marked(tmp_path):
    out = tmp_path / "o.txt"
    with provenance.job("m", [tmp_path / "absent"], [out]):
        out.write_text("x", encoding="utf-8")
    assert provenance.read_record(out)["inputs"] == [{"path": str(tmp_path / "absent"), "missing": True}]


def test_folder_output_uses_tree_digest(tmp_path):
    folder = tmp_path / "unpacked"
    with provenance.job("unpack", [], [folder]):
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "f.txt").write_text("hi", encoding="utf-8")
    assert provenance.record_path(folder) == tmp_path / "unpacked.prov.json"
    assert provenance.read_record(folder)["outputs"][0]["sha256"] == io.sha256_tree(folder)


def test_folder_marker_files_and_folder_stat_do_not_count_as_changes(tmp_path):
    """Snakemake drops `.snakemake_timestamp` into folder outputs after the job; dpkg sets the
    folder's mtime. Neither is a change of content; editing a file inside is."""
    folder = tmp_path / "unpacked"
    with provenance.job("unpack", [], [folder]):
        folder.mkdir()
        (folder / "f.txt").write_text("hi", encoding="utf-8")
    (folder / ".snakemake_timestamp").write_text("", encoding="utf-8")
    assert not provenance.chain(folder).modified
    (folder / "f.txt").write_text("changed", encoding="utf-8")
    assert provenance.chain(folder).modified


def test_shared_inputs_are_shown_once(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("s", encoding="utf-8")
    left, right, top = tmp_path / "l.txt", tmp_path / "r.txt", tmp_path / "t.txt"
    for out in (left, right):
        with provenance.job("split", [source], [out]):
            out.write_text(out.name, encoding="utf-8")
    with provenance.job("join", [left, right], [top]):
        top.write_text("t", encoding="utf-8")
    text = provenance.format_chain(provenance.chain(top))
    assert text.count(f"{source}  [source") == 1
    assert f"{source}  (shown above)" in text


def test_chain_walks_back_to_source(jobs):
    src, a, b = jobs
    node = provenance.chain(b)
    assert node.path == str(b) and node.record["rule"] == "make_b" and not node.modified
    (node_a,) = node.children
    assert node_a.path == str(a) and node_a.record["rule"] == "make_a" and not node_a.modified
    (node_src,) = node_a.children
    assert node_src.path == str(src) and node_src.record is None and node_src.children == []
    text = provenance.format_chain(node)
    assert "MODIFIED" not in text
    assert "source: no record" in text
    assert "rule make_b" in text and "rule make_a" in text
    assert sha(b)[:12] in text and sha(a)[:12] in text


def test_failing_block_writes_no_record(tmp_path):
    out = tmp_path / "o.txt"
    with pytest.raises(RuntimeError, match="boom"), provenance.job("fails", [], [out]):
        out.write_text("partial", encoding="utf-8")
        raise RuntimeError("boom")
    assert not provenance.record_path(out).exists()
    assert provenance.read_record(out) is None


def test_modified_output_is_flagged(jobs):
    _, a, b = jobs
    a.write_text("tampered with, and longer\n", encoding="utf-8")
    node = provenance.chain(b)
    assert node.modified is False
    assert node.children[0].modified is True
    text = provenance.format_chain(node)
    assert "MODIFIED" in text
    modified_line = next(line for line in text.splitlines() if "MODIFIED" in line)
    assert str(a) in modified_line


def test_touched_but_unchanged_is_not_flagged(jobs):
    _, a, b = jobs
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert provenance.chain(b).children[0].modified is False


def test_same_size_same_mtime_edit_is_not_rehashed(jobs):
    """Documented trade-off: size+mtime match means the recorded checksum is trusted."""
    _, a, _ = jobs
    st = a.stat()
    data = a.read_bytes()
    a.write_bytes(data[::-1])
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert provenance.file_entry(a)["sha256"] == provenance.read_record(a)["outputs"][0]["sha256"]


def test_file_entry_reuses_producer_checksum(jobs, monkeypatch):
    _, a, _ = jobs
    expected = sha(a)

    def forbidden(path):
        raise AssertionError(f"sha256_path({path}) was called")

    monkeypatch.setattr(provenance, "sha256_path", forbidden)
    entry = provenance.file_entry(a)
    assert entry == {"path": str(a), "sha256": expected, "size": a.stat().st_size,
                     "mtime_ns": a.stat().st_mtime_ns}
    # a changed stat means the checksum must be recomputed
    a.write_text("changed!!!", encoding="utf-8")
    with pytest.raises(AssertionError, match="sha256_path"):
        provenance.file_entry(a)


def test_file_entry_hashes_without_record(jobs):
    src, _, _ = jobs
    assert provenance.file_entry(src)["sha256"] == sha(src)


def test_cli_prints_chain(jobs, capsys):
    src, a, b = jobs
    assert cli.main(["provenance", str(b)]) == 0
    out = capsys.readouterr().out
    positions = [out.index(str(p)) for p in (b, a, src)]
    assert positions == sorted(positions)
    assert out.count(str(src)) == 1


def test_cli_json(jobs, capsys):
    src, a, b = jobs
    assert cli.main(["provenance", "--json", str(b)]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["path"] == str(b)
    assert tree["children"][0]["path"] == str(a)
    assert tree["children"][0]["children"][0] == {"path": str(src), "record": None, "modified": False,
                                                  "children": [], "repeated": False, "sha256": ""}


def test_cli_without_record(jobs, capsys):
    src, _, _ = jobs
    assert cli.main(["provenance", str(src)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "no provenance record" in err


def test_cli_check_config(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("device: gpu\n", encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    repo_config = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    assert cli.main(["check-config", str(repo_config)]) == 0
    assert "valid" in capsys.readouterr().out


# ---- xsae.io ---------------------------------------------------------------------------------
def test_atomic_path_failure_leaves_nothing(tmp_path):
    final = tmp_path / "deep" / "out.bin"
    with pytest.raises(ValueError), io.atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        tmp.write_bytes(b"half")
        raise ValueError("stop")
    assert list(final.parent.iterdir()) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), io.atomic_path(final) as tmp:
        tmp.write_text("new", encoding="utf-8")
        raise KeyboardInterrupt
    assert final.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with io.atomic_path(final) as tmp:
        tmp.write_text("new", encoding="utf-8")
        assert final.read_text(encoding="utf-8") == "old"  # not yet
    assert final.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_directory(tmp_path):
    final = tmp_path / "tree"
    (final / "stale").mkdir(parents=True)
    with pytest.raises(RuntimeError), io.atomic_path(final, directory=True) as tmp:
        (tmp / "f").write_text("x", encoding="utf-8")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]
    assert [p.name for p in final.iterdir()] == ["stale"]
    with io.atomic_path(final, directory=True) as tmp:
        (tmp / "f").write_text("x", encoding="utf-8")
    assert [p.name for p in final.iterdir()] == ["f"]
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_write_json_and_sha256_file(tmp_path):
    path = tmp_path / "x.json"
    io.write_json(path, {"b": 1, "p": Path("/q")})
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": 1, "p": "/q"}
    assert io.sha256_file(path) == sha(path)
    assert io.sha256_path(path) == sha(path)


def _tree(root: Path, files: dict[str, bytes], order) -> Path:
    for name in order:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[name])
    return root


def test_sha256_tree(tmp_path):
    files = {"a.txt": b"A", "sub/b.bin": b"\x00\x01", "sub/deeper/c": b"C" * 3000, "z": b""}
    one = _tree(tmp_path / "one", files, sorted(files))
    two = _tree(tmp_path / "two", files, sorted(files, reverse=True))
    assert io.sha256_tree(one) == io.sha256_tree(two)
    assert io.sha256_path(one) == io.sha256_tree(one)
    assert re.fullmatch(r"[0-9a-f]{64}", io.sha256_tree(one))

    before = io.sha256_tree(two)
    (two / "sub" / "b.bin").write_bytes(b"\x00\x02")
    assert io.sha256_tree(two) != before
    (two / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert io.sha256_tree(two) == before
    (two / "sub" / "b.bin").rename(two / "sub" / "b2.bin")
    assert io.sha256_tree(two) != before
    (two / "sub" / "b2.bin").rename(two / "sub" / "b.bin")
    (two / "empty_dir").mkdir()
    assert io.sha256_tree(two) == before  # only files count


@pytest.fixture
def relative_jobs(tmp_path, monkeypatch):
    """The jobs of `jobs`, recorded with paths relative to the workflow folder, as Snakemake's are."""
    work = tmp_path / "workflow"
    (work / "resources").mkdir(parents=True)
    monkeypatch.chdir(work)
    Path("resources/source.txt").write_text("raw data\n", encoding="utf-8")
    with provenance.job("make_a", ["resources/source.txt"], ["results/a.txt"]):
        Path("results").mkdir()
        Path("results/a.txt").write_text("RAW DATA\n", encoding="utf-8")
    with provenance.job("make_b", ["results/a.txt"], ["results/b.csv"]):
        Path("results/b.csv").write_text("x\n1\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return work


@pytest.mark.parametrize("how", ["relative", "absolute", "absolute from another folder"])
def test_the_same_chain_from_any_path_and_folder(relative_jobs, monkeypatch, capsys, how):
    work = relative_jobs
    path = "results/b.csv" if how == "relative" else str(work / "results" / "b.csv")
    if how == "absolute from another folder":
        monkeypatch.chdir(work.parent / "elsewhere")
    assert cli.main(["provenance", path]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {sha(work / 'results' / 'b.csv')[:12]}" in out
    assert f"results/a.txt  [rule make_a; sha256 {sha(work / 'results' / 'a.txt')[:12]}" in out
    assert "MODIFIED" not in out
    (work / "results" / "a.txt").write_text("tampered with\n", encoding="utf-8")
    assert cli.main(["provenance", path]) == 1
    captured = capsys.readouterr()
    assert "results/a.txt  [rule make_a" in captured.out and "MODIFIED" in captured.out
    assert "1 file(s) changed since they were recorded: results/a.txt" in captured.err


def test_a_record_holds_the_threads_the_job_was_given(tmp_path):
    import torch

    record = provenance.Job(rule="r", inputs=[], outputs=[str(tmp_path / "x")], threads=3).record()
    assert record["threads"] == {"job": 3, "torch": torch.get_num_threads()}
