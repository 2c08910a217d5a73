"""Open Images V7 (SPARC's subset) and the URL-list datasets (LAION subset, CC-3M) against a loopback server.

The fixtures are tiny files in the published formats: Open Images CSVs, the nested hierarchy JSON,
Localized Narratives JSONL, a header-less CC-3M TSV and a LAION list with URL/TEXT columns (as CSV:
pyarrow is not installed in this environment, so the Parquet path is tested only where it is).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest
from http_fixtures import loopback_server
from PIL import Image

from xsae.datasets import openimages, urllists
from xsae.download import DownloadReport
from xsae.errors import ConfigError
from xsae.rehearsal.datasets import (
    cc3m_tsv,
    csv_bytes,
    laion_parquet,
    narratives_jsonl,
    open_images_files,
    solid_image,
)


@pytest.fixture(autouse=True)
def _bounded_and_local(monkeypatch):
    """Fail a test that hangs, and keep proxy settings from routing loopback requests elsewhere."""
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


def jpeg(color: tuple[int, int, int]) -> bytes:
    return solid_image(color, (8, 6))


def png(color: tuple[int, int, int]) -> bytes:
    return solid_image(color, (5, 7), "PNG")


# ----------------------------------------------------------------------------------- Open Images

# Real-looking ids: A has two narratives, B and C one, D one but its image is missing on the server
# (404), E is boxable without a narrative, F has a narrative but is not in the boxable list.
A, B, C, D, E, F = ("000a1249af2bc5f0", "000ada55d36b4bcb", "0010a7e4b5e8ac4d", "00a3b0f9c2d1e4f5",
                    "0b0c0d0e0f101112", "ffff000011112222")
TRAIN_1, TRAIN_2 = "0000048549557964", "000023aa04ab09ed"

CLASSES = [
    ("/m/0bl9f", "Entity"), ("/m/0jbk", "Animal"), ("/m/01lrl", "Carnivore"), ("/m/0bt9lr", "Dog"),
    ("/m/01yrx", "Cat"), ("/m/07yv9", "Vehicle"), ("/m/0k4j", "Car"), ("/m/083wq", "Wheel"),
    ("/m/07j7r", "Tree"),
]
HIERARCHY = {
    "LabelName": "/m/0bl9f",
    "Subcategory": [
        {"LabelName": "/m/0jbk", "Subcategory": [
            {"LabelName": "/m/01lrl", "Subcategory": [{"LabelName": "/m/0bt9lr"}, {"LabelName": "/m/01yrx"}]},
            {"LabelName": "/m/0bt9lr"},  # listed twice: the first parent (Carnivore) is kept
        ]},
        {"LabelName": "/m/07yv9", "Subcategory": [
            {"LabelName": "/m/0k4j", "Part": [{"LabelName": "/m/083wq"}]},  # part-of, not is-a
        ]},
    ],
}
EXPECTED_HIERARCHY = {"Animal": None, "Carnivore": "Animal", "Dog": "Carnivore", "Cat": "Carnivore",
                      "Vehicle": None, "Car": "Vehicle", "Wheel": None, "Tree": None}

NARRATIVES_TEST = [
    (B, "In this image we can see a dog."),
    (A, "In this picture there is a  cat\non a car."),
    (C, "A tree."),
    (A, "Here we can see a cat sitting on a car."),
    (D, "A dog on the grass."),
    (F, "A picture that is not boxable."),
]
LABELS_TEST = [  # ImageID, Source, LabelName, Confidence
    (A, "verification", "/m/01yrx", 1), (A, "crowdsource-verification", "/m/01yrx", 1),
    (A, "verification", "/m/0k4j", 1), (A, "verification", "/m/0bt9lr", 0),
    (B, "verification", "/m/0bt9lr", 1), (B, "verification", "/m/0k4j", 0),
    (B, "verification", "/m/0notboxable", 1),
    (C, "verification", "/m/07j7r", 0),
    (D, "verification", "/m/0bt9lr", 1), (E, "verification", "/m/07j7r", 1),
]


COLORS = {A: (200, 10, 10), B: (10, 200, 10), C: (10, 10, 200), E: (90, 90, 90),
          TRAIN_1: (1, 2, 3), TRAIN_2: (50, 60, 70)}


def serve_open_images(server) -> str:
    splits = {
        "test": {"image_ids": [C, A, E, D, B], "labels": LABELS_TEST, "narratives": NARRATIVES_TEST,
                 "dataset_id": "open_images_test"},
        "train": {"image_ids": [TRAIN_2, TRAIN_1], "labels": [(TRAIN_1, "verification", "/m/0k4j", 1)],
                  "narratives": [(TRAIN_1, "A red car."), (TRAIN_2, "Two trees.")],
                  "dataset_id": "open_images_train"},
    }
    for name, body in open_images_files(CLASSES, HIERARCHY, splits).items():
        server.add(f"/{name}", body)
    for image_id, color in COLORS.items():
        split = "train" if image_id in (TRAIN_1, TRAIN_2) else "test"
        server.add(f"/{split}/{image_id}.jpg", jpeg(color))
    return server.url("")


def image_requests(server) -> list[str]:
    return [seen.path for seen in server.seen if seen.path.endswith(".jpg")]


def test_simplify_narratives_writes_the_expected_table(tmp_path):
    source = tmp_path / "captions.jsonl"
    source.write_bytes(narratives_jsonl(NARRATIVES_TEST, "open_images_test") + b"\n")
    out = tmp_path / "captions" / "test.csv"
    assert openimages.simplify_narratives(source, out) == 6
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["image_id", "narrative_index", "caption"]
    assert table.values.tolist() == [
        [A, "0", "In this picture there is a cat on a car."],  # whitespace collapsed
        [A, "1", "Here we can see a cat sitting on a car."],
        [B, "0", "In this image we can see a dog."],
        [C, "0", "A tree."],
        [D, "0", "A dog on the grass."],
        [F, "0", "A picture that is not boxable."],
    ]
    assert not list(out.parent.glob(".*.tmp")), "written atomically, no temporary left behind"


def test_hierarchy_nesting_becomes_name_to_parent():
    names = dict(CLASSES)
    assert openimages.hierarchy_parents(HIERARCHY, names) == EXPECTED_HIERARCHY
    # Three levels: Dog → Carnivore → Animal → (top); the root "Entity" is not a label.
    parents = openimages.hierarchy_parents(HIERARCHY, names)
    chain, name = [], "Dog"
    while name is not None:
        chain.append(name)
        name = parents[name]
    assert chain == ["Dog", "Carnivore", "Animal"]
    assert "Entity" not in parents


def test_open_images_download_and_samples(server, tmp_path):
    base = serve_open_images(server)
    root = tmp_path / "oi"
    record = openimages.download(root, base_url=base, workers=3, progress=False, timeout=5)

    table = openimages.samples(root, "test")
    assert table["sample_id"].tolist() == [f"{A}_0", f"{A}_1", f"{B}_0", f"{C}_0"]
    assert table["caption"].tolist() == ["In this picture there is a cat on a car.",
                                         "Here we can see a cat sitting on a car.",
                                         "In this image we can see a dog.", "A tree."]
    # Confidence 0 dropped, duplicates merged, MIDs → display names, non-boxable MID dropped.
    assert table["labels"].tolist() == [["Car", "Cat"], ["Car", "Cat"], ["Dog"], []]
    assert table["image_path"].tolist() == [str(root / "images" / "test" / f"{i}.jpg") for i in (A, A, B, C)]
    assert Image.open(table["image_path"][0]).size == (8, 6)
    assert openimages.hierarchy(root) == EXPECTED_HIERARCHY

    # The 404 image is recorded, and its narrative's row is absent.
    report = DownloadReport.read(root / "reports" / "images_test.json")
    assert [(item.key, item.http_status) for item in report.failed] == [(D, 404)]
    test = record["splits"]["test"]
    assert (test["selected_images"], test["images_resolved"], test["images_failed"]) == (4, 3, 1)
    assert test["failed_image_ids"] == [D] and test["narrated_not_boxable"] == 1
    assert (test["rows"], test["rows_with_labels"]) == (4, 3)
    assert record["files"]["test.labels"]["sha256"] and record["labels"] == 8
    assert f"/test/{E}.jpg" not in image_requests(server), "uncaptioned images are not fetched by default"
    assert f"/test/{F}.jpg" not in image_requests(server), "non-boxable images are not fetched"

    train = openimages.samples(root, "train")
    assert train["sample_id"].tolist() == [f"{TRAIN_1}_0", f"{TRAIN_2}_0"]  # sorted ids
    assert train["labels"].tolist() == [["Car"], []]

    # Stable ids, and a rerun fetches no image again (only the 404 one is retried).
    before = len(image_requests(server))
    openimages.download(root, base_url=base, workers=3, progress=False, timeout=5)
    assert image_requests(server)[before:] == [f"/test/{D}.jpg"]
    pd.testing.assert_frame_equal(openimages.samples(root, "test"), table)


def test_open_images_max_images_caps_deterministically(server, tmp_path):
    base = serve_open_images(server)
    root = tmp_path / "oi"
    openimages.download(root, base_url=base, workers=3, progress=False, max_images=2)
    # Sorted narrated boxable ids A < B < C < D: the first two, whatever the order of the files.
    assert (root / "selection" / "test.txt").read_text().split() == [A, B]
    assert openimages.samples(root, "test")["sample_id"].tolist() == [f"{A}_0", f"{A}_1", f"{B}_0"]
    assert sorted(image_requests(server)) == sorted(
        [f"/test/{A}.jpg", f"/test/{B}.jpg", f"/train/{TRAIN_1}.jpg", f"/train/{TRAIN_2}.jpg"])
    other = tmp_path / "again"
    openimages.download(other, base_url=base, workers=1, progress=False, max_images={"test": 2, "train": 1})
    assert openimages.samples(other, "test")["sample_id"].tolist() == [f"{A}_0", f"{A}_1", f"{B}_0"]
    assert openimages.samples(other, "train")["sample_id"].tolist() == [f"{TRAIN_1}_0"]


def test_open_images_keep_uncaptioned_adds_one_empty_caption_row(server, tmp_path):
    base = serve_open_images(server)
    root = tmp_path / "oi"
    openimages.download(root, base_url=base, workers=3, progress=False, keep_uncaptioned=True)
    table = openimages.samples(root, "test")
    assert table["sample_id"].tolist() == [f"{A}_0", f"{A}_1", f"{B}_0", f"{C}_0", f"{E}_0"]
    assert table["caption"].tolist()[-1] == "" and table["labels"].tolist()[-1] == ["Tree"]


def test_open_images_rejects_unknown_options(tmp_path):
    from xsae.errors import ConfigError

    with pytest.raises(ConfigError, match="max_imgaes"):
        openimages.download(tmp_path, max_imgaes=3)


# ------------------------------------------------------------------------------------- URL lists


def serve_cc3m(server) -> tuple[str, list[tuple[str, str]]]:
    """Six training rows: four images, one 404, one HTML page served as 200; two test rows."""
    server.add("/img/a.jpg", jpeg((255, 0, 0)))
    server.add("/img/b.png", png((0, 255, 0)))
    server.add("/img/c.jpg?size=large", jpeg((0, 0, 255)))
    server.add("/img/d", jpeg((9, 9, 9)))
    server.add("/img/moved.jpg", b"<!DOCTYPE html><html><body>This image has moved</body></html>")
    server.add("/img/t1.jpg", jpeg((1, 1, 1)))
    server.add("/img/t2.jpg", jpeg((2, 2, 2)))
    train = [
        ("a red square", server.url("/img/a.jpg")),
        ('a "green" square, as png', server.url("/img/b.png")),
        ("a page that is gone", server.url("/img/gone.jpg")),
        ("a blue square", server.url("/img/c.jpg?size=large")),
        ("an html page, not an image", server.url("/img/moved.jpg")),
        ("a dark square", server.url("/img/d")),
    ]
    test = [("test one", server.url("/img/t1.jpg")), ("test two", server.url("/img/t2.jpg"))]
    for split, rows in (("train", train), ("test", test)):
        server.add(f"/{urllists.SOURCES['cc3m']['lists'][split]['file']}", cc3m_tsv(rows))
    return server.url(""), train


def relative(table: pd.DataFrame, root: Path) -> list[tuple]:
    return [(s, str(Path(p).relative_to(root)), c, tuple(labels))
            for s, p, c, labels in table.itertuples(index=False)]


def test_cc3m_failures_recorded_and_the_rest_proceed(server, tmp_path):
    base, _ = serve_cc3m(server)
    root = tmp_path / "cc3m"
    record = urllists.download(root, dataset="cc3m", base_url=base, workers=3, progress=False, timeout=5)

    train = record["splits"]["train"]
    assert (train["rows"], train["resolved"], train["failed"]) == (6, 4, 2)
    assert train["failures_by_kind"] == {"http 404": 1, "undecodable": 1}
    assert (record["splits"]["test"]["resolved"], record["splits"]["test"]["failed"]) == (2, 0)
    assert record["files"]["train"]["sha256"] and record["files"]["test"]["bytes"] > 0

    failed = DownloadReport.read(root / train["failed_report"])
    assert [(item.key, item.http_status) for item in failed.items] == [
        ("cc3m_train_00000002", 404), ("cc3m_train_00000004", None)]
    assert failed.items[1].reason.startswith("undecodable")
    assert not Path(failed.items[1].dest).exists(), "the HTML page is deleted"

    table = urllists.samples(root, "train", dataset="cc3m")
    assert table["sample_id"].tolist() == ["cc3m_train_00000000", "cc3m_train_00000001",
                                           "cc3m_train_00000003", "cc3m_train_00000005"]
    assert table["caption"].tolist() == ["a red square", 'a "green" square, as png', "a blue square",
                                         "a dark square"]
    assert table["labels"].tolist() == [[], [], [], []]
    assert [Path(p).suffix for p in table["image_path"]] == [".jpg", ".png", ".jpg", ".img"]
    for path in table["image_path"]:
        Image.open(path).verify()
    test = urllists.samples(root, "test", dataset="cc3m")
    assert test["sample_id"].tolist() == ["cc3m_test_00000000", "cc3m_test_00000001"]
    assert urllists.hierarchy(root, dataset="cc3m") == {}


def test_rerun_sends_no_request_and_resumes_unfinished_shards(server, tmp_path):
    base, _ = serve_cc3m(server)
    root = tmp_path / "cc3m"
    urllists.download(root, dataset="cc3m", base_url=base, workers=3, progress=False, shard_size=4)
    table = urllists.samples(root, "train")
    seen = len(server.seen)

    record = urllists.download(root, dataset="cc3m", base_url=base, workers=3, progress=False, shard_size=4)
    assert len(server.seen) == seen, "finished shards and present lists are not requested again"
    assert record["splits"]["train"]["shards_resumed"] == 2
    assert (record["splits"]["train"]["resolved"], record["splits"]["train"]["failed"]) == (4, 2)

    # An interrupted run leaves no shard report: the rerun re-requests only what did not resolve.
    for report in (root / "reports" / "train").glob("rows_*.json"):
        report.unlink()
    urllists.download(root, dataset="cc3m", base_url=base, workers=3, progress=False, shard_size=4)
    assert sorted(s.path for s in server.seen[seen:]) == ["/img/gone.jpg", "/img/moved.jpg"]
    pd.testing.assert_frame_equal(urllists.samples(root, "train"), table)


def test_sharding_gives_the_same_samples(server, tmp_path):
    base, _ = serve_cc3m(server)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    urllists.download(whole, dataset="cc3m", base_url=base, workers=2, progress=False, shard_size=None)
    assert len(list((whole / "reports" / "train").glob("rows_*.json"))) == 1
    record = urllists.download(sharded, dataset="cc3m", base_url=base, workers=2, progress=False,
                               shard_size=2)
    assert record["splits"]["train"]["shards"] == 3
    assert len(list((sharded / "reports" / "train").glob("rows_*.json"))) == 3
    for split in ("train", "test"):
        assert relative(urllists.samples(whole, split), whole) == \
            relative(urllists.samples(sharded, split), sharded)


def laion_rows(server) -> list[list]:
    """URL/TEXT plus the other columns of a LAION list; one row without a URL."""
    rows = []
    for i in range(12):
        url = server.add(f"/laion/{i}.jpg", jpeg((20 * i, 0, 0))) if i != 7 else ""
        if i == 3:
            url = server.url("/laion/missing.jpg")
        rows.append([f"SAMPLE{i}", url, f"caption number {i}", 640, 480, "en", 0.31])
    return rows


LAION_HEADER = ["SAMPLE_ID", "URL", "TEXT", "WIDTH", "HEIGHT", "LANGUAGE", "similarity"]


def check_laion(root: Path, record: dict, rows: list[list], fraction: float) -> None:
    resolved = [i for i in range(len(rows)) if i not in (3, 7)]
    counts = {split: record["splits"][split] for split in ("train", "test")}
    assert sum(c["rows"] for c in counts.values()) == 12
    assert sum(c["resolved"] for c in counts.values()) == 10
    failures = {}
    for split in ("train", "test"):
        for kind, n in counts[split]["failures_by_kind"].items():
            failures[kind] = failures.get(kind, 0) + n
    assert failures == {"http 404": 1, "no url": 1}
    seen = []
    for split in ("train", "test"):
        table = urllists.samples(root, split, dataset="laion_subset")
        for sample, caption in zip(table["sample_id"], table["caption"], strict=True):
            row = int(sample.rsplit("_", 1)[1])
            assert sample == f"laion_subset_{split}_{row:08d}"
            assert urllists.hash_split(row, fraction) == split and caption == f"caption number {row}"
            seen.append(row)
    assert sorted(seen) == resolved


def laion_from_csv(server, root: Path, test_fraction: float) -> tuple[dict, list[list]]:
    """A LAION list served as CSV, downloaded into `root`: the record and the listed rows."""
    rows = laion_rows(server)
    server.add("/lists/laion.csv", csv_bytes(LAION_HEADER, rows))
    record = urllists.download(root, dataset="laion_subset", workers=3, progress=False,
                               test_fraction=test_fraction, list_urls={"all": server.url("/lists/laion.csv")})
    return record, rows


def test_laion_subset_from_a_csv_list(server, tmp_path):
    root = tmp_path / "laion"
    record, rows = laion_from_csv(server, root, 0.5)
    check_laion(root, record, rows, 0.5)
    assert {urllists.hash_split(i, 0.5) for i in range(12)} == {"train", "test"}, "both splits used"


def test_laion_subset_without_hold_out_downloads_once_and_both_splits_are_every_pair(server, tmp_path):
    """test_fraction 0, as the sharedness paper trains and compares on all pairs."""
    root = tmp_path / "laion"
    record, _ = laion_from_csv(server, root, 0)
    assert record["splits"]["train"] == record["splits"]["test"]
    assert (record["splits"]["test"]["rows"], record["splits"]["test"]["resolved"]) == (12, 10)
    fetched = [path for path in image_requests(server) if path.startswith("/laion/")]
    assert sorted(fetched) == sorted(set(fetched)) and len(fetched) == 11  # 10 images, one 404, once each
    tables = {split: urllists.samples(root, split, dataset="laion_subset") for split in ("train", "test")}
    pd.testing.assert_frame_equal(tables["train"], tables["test"])
    rows_kept = [int(sample.rsplit("_", 1)[1]) for sample in tables["test"]["sample_id"]]
    assert rows_kept == [i for i in range(12) if i not in (3, 7)]
    assert not (root / "images" / "test").exists() and not (root / "reports" / "test").exists()
    with pytest.raises(ConfigError, match=r"test_fraction: expected a number in \[0, 1\)"):
        urllists.download(tmp_path / "bad", dataset="laion_subset", progress=False, test_fraction=1,
                          list_urls={"all": server.url("/lists/laion.csv")})


def test_laion_subset_from_parquet(server, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed; the CSV test covers the same path")
    rows = laion_rows(server)
    name = urllists.SOURCES["laion_subset"]["lists"]["all"]["file"]
    server.add(f"/{name}", laion_parquet(rows, LAION_HEADER))
    root = tmp_path / "laion"
    record = urllists.download(root, dataset="laion_subset", base_url=server.url(""), workers=3,
                               progress=False, test_fraction=0.5)
    check_laion(root, record, rows, 0.5)


def test_without_pyarrow_a_parquet_list_fails_with_advice(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyarrow is installed; the Parquet test above reads a real file")
    from xsae.errors import DataError

    path = tmp_path / "list.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pyarrow"):
        urllists.read_list(path, urllists.SOURCES["laion_subset"])


def test_cc3m_lists_provided_by_hand_are_used_in_place(server, tmp_path):
    serve_cc3m(server)
    folder = tmp_path / "by_hand"
    folder.mkdir()
    for split in ("train", "test"):
        name = urllists.SOURCES["cc3m"]["lists"][split]["file"]
        folder.joinpath(name).write_bytes(server.routes[f"/{name}"].body)
    root = tmp_path / "cc3m"
    record = urllists.download(root, dataset="cc3m", workers=2, progress=False, provided=str(folder))
    assert not [s for s in server.seen if s.path.endswith(".tsv")], "no list is fetched"
    assert record["files"]["train"]["provided"] and record["splits"]["train"]["resolved"] == 4
    assert len(urllists.samples(root, "train")) == 4
