"""COCO, Oxford-102 Flowers and ImageNet val: tiny archives in the real layouts, served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from http_fixtures import loopback_server

from xsae.datasets import coco, flowers, imagenet, manifest
from xsae.datasets.sources import source_for
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.rehearsal.datasets import (
    archive_sources,
    coco_archives,
    flowers_files,
    imagenet_meta_mat,
    imagenet_val_files,
    solid_image,
    tar_bytes,
    write_files,
)


def _jpeg(seed: int) -> bytes:
    return solid_image(((40 * seed) % 256, 90, 200))


def _sources(module_sources: dict, bodies: dict[str, bytes]) -> dict:
    """The module's sources with the fixture's sizes and checksums (the fixtures are not the real files)."""
    return archive_sources(module_sources, bodies)


# -------------------------------------------------------------------------------------------- COCO

CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]


def _coco_bodies() -> dict[str, bytes]:
    def images(ids):
        return [{"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 6} for i in ids]

    captions_train = {"images": images([3, 1, 2]), "annotations": [
        {"image_id": 1, "id": 30, "caption": "Third caption."},
        {"image_id": 1, "id": 5, "caption": "A  dog next to\na person. "},
        {"image_id": 2, "id": 7, "caption": "A red bicycle."},
        {"image_id": 1, "id": 12, "caption": "Second one\n"},
        {"image_id": 3, "id": 8, "caption": "An empty street."},
    ]}
    polygon = [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0]]
    instances_train = {"images": images([3, 1, 2]), "categories": CATEGORIES, "annotations": [
        {"id": 101, "image_id": 1, "category_id": 18, "bbox": [1, 1, 3, 2], "segmentation": polygon,
         "area": 6.0, "iscrowd": 0},
        {"id": 102, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": polygon,
         "area": 4.0, "iscrowd": 0},
        {"id": 103, "image_id": 1, "category_id": 1, "bbox": [2, 2, 1, 1],
         "segmentation": {"counts": [0, 4], "size": [6, 8]}, "area": 1.0, "iscrowd": 1},
        {"id": 104, "image_id": 2, "category_id": 2, "bbox": [0, 0, 8, 6], "segmentation": polygon,
         "area": 48.0, "iscrowd": 0},
    ]}
    captions_val = {"images": images([10]), "annotations": [
        {"image_id": 10, "id": 2, "caption": "b"}, {"image_id": 10, "id": 1, "caption": "a"}]}
    instances_val = {"images": images([10]), "categories": CATEGORIES, "annotations": [
        {"id": 200, "image_id": 10, "category_id": 17, "bbox": [0, 0, 1, 1], "segmentation": polygon,
         "area": 1.0, "iscrowd": 0}]}
    annotations = {"captions_train2017": captions_train, "instances_train2017": instances_train,
                   "captions_val2017": captions_val, "instances_val2017": instances_val}
    images = {"train2017": {f"{i:012d}.jpg": _jpeg(i) for i in (1, 2, 3)},
              "val2017": {"000000000010.jpg": _jpeg(10)}}
    return coco_archives(images, annotations)


def _serve(server, prefix: str, bodies: dict[str, bytes]) -> str:
    return server.publish(prefix, bodies)


def test_coco_download_samples_hierarchy_and_instances(tmp_path):
    bodies = _coco_bodies()
    root = tmp_path / "coco"
    with loopback_server() as server:
        base = _serve(server, "/coco", bodies)
        record = coco.download(root, base_url=base, workers=2, progress=False,
                               sources=_sources(coco.SOURCES, bodies))
        again = coco.download(root, base_url=base, workers=2, progress=False,
                              sources=_sources(coco.SOURCES, bodies))
        assert len(server.seen) == 3, "the second run must fetch nothing"
    for key, source in coco.SOURCES.items():
        entry = record["files"][key]
        assert entry["sha256"] == hashlib.sha256(bodies[source["file"]]).hexdigest()
        assert entry["bytes"] == len(bodies[source["file"]])
        assert again["files"][key]["outcome"] == "already unpacked"
        assert again["files"][key]["sha256"] == entry["sha256"]
    assert record["failures"] == []
    assert json.loads((root / "download.json").read_text())["files"].keys() == record["files"].keys()
    assert not list((root / "downloads").glob("*.zip")), "archives are removed once unpacked"

    train = coco.samples(root, "train")
    assert list(train.columns) == ["sample_id", "image_path", "caption", "labels"]
    assert train["sample_id"].tolist() == ["000000000001", "000000000002", "000000000003"]
    assert train["caption"].tolist() == [
        "A dog next to a person. Second one Third caption.",  # annotation ids 5, 12, 30
        "A red bicycle.",
        "An empty street.",
    ]
    assert coco.CAPTION_JOINER == " "
    assert train["labels"].tolist() == [["person", "dog"], ["bicycle"], []]
    assert all(Path(p).is_file() for p in train["image_path"])
    assert Path(train["image_path"][0]).name == "000000000001.jpg"

    test = coco.samples(root, "test")
    assert test["sample_id"].tolist() == ["000000000010"]
    assert test["caption"].tolist() == ["a b"]
    assert test["labels"].tolist() == [["cat"]]
    assert Path(test["image_path"][0]).parent.name == "val2017"

    assert coco.hierarchy(root) == {
        "person": None, "bicycle": "vehicle", "cat": "animal", "dog": "animal",
        "vehicle": None, "animal": None,
    }
    found = coco.instances(root, "train")
    assert sorted(found) == [1, 2]
    assert [i.category for i in found[1]] == ["dog", "person", "person"]
    assert found[1][0].bbox == [1.0, 1.0, 3.0, 2.0]
    assert found[1][2].segmentation == {"counts": [0, 4], "size": [6, 8]}
    assert found.get(3, []) == []
    with pytest.raises(ConfigError, match="split must be one of"):
        coco.samples(root, "val")

    each = coco.samples(root, "train", captions="each")
    assert each["sample_id"].tolist() == ["000000000001_5", "000000000001_12", "000000000001_30",
                                          "000000000002_" + each["sample_id"][3].split("_")[1],
                                          "000000000003_" + each["sample_id"][4].split("_")[1]]
    assert each["caption"].tolist() == ["A dog next to a person.", "Second one", "Third caption.",
                                        "A red bicycle.", "An empty street."]
    assert each["image_path"].tolist()[:3] == [train["image_path"][0]] * 3
    assert each["labels"].tolist()[:4] == [["person", "dog"]] * 3 + [["bicycle"]]
    with pytest.raises(ConfigError, match="captions must be 'joined' or 'each'"):
        coco.samples(root, "train", captions="both")


def test_coco_tables_fit_the_manifest_contract(tmp_path):
    bodies = _coco_bodies()
    root = tmp_path / "coco"
    with loopback_server() as server:
        coco.download(root, base_url=_serve(server, "/coco", bodies), workers=2, progress=False,
                      sources=_sources(coco.SOURCES, bodies))
    table, labels = manifest.labelled_manifest(coco.samples(root, "train"), coco.hierarchy(root))
    assert table["sample_id"].tolist() == ["000000000001", "000000000002", "000000000003"]
    paths = {label.path for label in labels}
    assert {"animal", "animal/dog", "animal/cat", "vehicle", "vehicle/bicycle", "person"} == paths
    by_id = {label.id: label.path for label in labels}
    assert {by_id[int(i)] for i in table["label_ids"][0].split(";")} == {"person", "animal", "animal/dog"}
    assert {by_id[int(i)] for i in table["leaf_ids"][0].split(";")} == {"person", "animal/dog"}
    assert table["label_ids"][2] == ""


def test_coco_truncated_zip_is_detected_and_nothing_is_unpacked(tmp_path):
    bodies = _coco_bodies()
    bodies["train2017.zip"] = bodies["train2017.zip"][: len(bodies["train2017.zip"]) * 2 // 3]
    root = tmp_path / "coco"
    with loopback_server() as server:
        base = _serve(server, "/coco", bodies)
        with pytest.raises(DownloadError, match=r"train2017\.zip") as info:
            coco.download(root, base_url=base, workers=2, progress=False,
                          sources=_sources(coco.SOURCES, bodies))
    assert "nothing was unpacked" in str(info.value)
    assert "val2017.zip" not in str(info.value)
    assert not (root / "downloads" / "train2017.zip").exists(), "the bad archive is deleted"
    assert (root / "downloads" / "val2017.zip").is_file(), "whole archives are kept for the rerun"
    assert not any(p.is_dir() and p.name != "downloads" for p in root.iterdir())


def test_coco_published_sizes_are_enforced(tmp_path):
    """The real SOURCES carry the published byte counts; a file of another size is refused."""
    bodies = _coco_bodies()
    with loopback_server() as server:
        base = _serve(server, "/coco", bodies)
        with pytest.raises(DownloadError, match="815585330"):
            coco.download(tmp_path / "coco", base_url=base, workers=2, progress=False)
    assert coco.SOURCES["train_images"]["size"] == 19_336_861_798
    assert coco.SOURCES["annotations"]["size"] == 252_907_541


# ----------------------------------------------------------------------------------------- Flowers

FLOWER_LABELS = [77, 77, 1, 1, 102, 2, 2, 77]  # image i+1 → class


def _flowers_bodies(captions_body: bytes | None = None) -> dict[str, bytes]:
    captions = {i: [f"caption {k} of flower {i}" for k in range(1, 11)] for i in range(1, 9)}
    return flowers_files({i: _jpeg(i) for i in range(1, 9)}, FLOWER_LABELS,
                         {"trnid": [3, 1], "valid": [6], "tstid": [2, 4, 5, 7, 8]}, captions,
                         extra_caption_files={"trainclasses.txt": b"class_00001\n"},
                         captions_body=captions_body)


def test_flowers_splits_captions_and_labels(tmp_path):
    bodies = _flowers_bodies()
    root = tmp_path / "flowers"
    with loopback_server() as server:
        base = _serve(server, "/vgg", bodies)
        record = flowers.download(root, base_url=base, workers=2, progress=False,
                                  sources=_sources(flowers.SOURCES, bodies))
    assert record["files"]["captions"]["sha256"] == hashlib.sha256(
        bodies["cvpr2016_flowers.tar.gz"]).hexdigest()
    assert (root / "downloads" / "setid.mat").is_file()

    train = flowers.samples(root, "train")
    assert train["sample_id"].tolist() == ["image_00001", "image_00003", "image_00006"]  # trnid + valid
    assert train["caption"].tolist() == ["caption 1 of flower 1", "caption 1 of flower 3",
                                         "caption 1 of flower 6"]
    assert train["labels"].tolist() == [["passion flower"], ["pink primrose"], ["hard-leaved pocket orchid"]]
    assert all(Path(p).is_file() for p in train["image_path"])

    test = flowers.samples(root, "test")
    assert test["sample_id"].tolist() == ["image_00002", "image_00004", "image_00005", "image_00007",
                                          "image_00008"]
    assert test["labels"].tolist()[2] == ["blackberry lily"]
    assert set(train["sample_id"]).isdisjoint(test["sample_id"])

    tree = flowers.hierarchy(root)
    assert len(tree) == 102 and set(tree.values()) == {None}
    assert flowers.CLASS_NAMES[0] == "pink primrose" and flowers.CLASS_NAMES[101] == "blackberry lily"


def test_flowers_caption_url_and_caption_class_check(tmp_path):
    """captions_url overrides the captions host even with base_url; a caption filed under the wrong
    class means archives that do not belong together."""
    bodies = _flowers_bodies()
    root = tmp_path / "flowers"
    with loopback_server() as server:
        base = _serve(server, "/vgg", {k: v for k, v in bodies.items() if k != "cvpr2016_flowers.tar.gz"})
        elsewhere = server.add("/mirror/reed.tgz", bodies["cvpr2016_flowers.tar.gz"])
        flowers.download(root, base_url=base, workers=2, progress=False, captions_url=elsewhere,
                         sources=_sources(flowers.SOURCES, bodies))
        assert server.requests_for("/mirror/reed.tgz")
    # a local copy of the captions (here: the folder just unpacked) is installed without a download
    other = tmp_path / "flowers2"
    with loopback_server() as server:
        base = _serve(server, "/vgg", {k: v for k, v in bodies.items() if k != "cvpr2016_flowers.tar.gz"})
        record = flowers.download(other, base_url=base, workers=2, progress=False,
                                  captions_url=str(root / "captions"),
                                  sources=_sources(flowers.SOURCES, bodies))
        assert not server.requests_for("/vgg/cvpr2016_flowers.tar.gz")
    assert record["files"]["captions"]["outcome"] == "provided"
    assert json.loads((other / "download.json").read_text())["files"]["captions"]["outcome"] == "provided"
    assert flowers.samples(other, "test")["caption"].tolist()[0] == "caption 1 of flower 2"

    text_dir = root / "captions" / "cvpr2016_flowers" / "text_c10"
    (text_dir / "class_00077" / "image_00003.txt").write_text("misfiled\n")
    (text_dir / "class_00001" / "image_00003.txt").unlink()
    with pytest.raises(DataError, match="class 77"):
        flowers.samples(root, "train")


def test_flowers_caption_page_instead_of_archive_says_what_to_do(tmp_path):
    bodies = _flowers_bodies(captions_body=b"<html>Google Drive can't scan this file for viruses</html>")
    root = tmp_path / "flowers"
    with loopback_server() as server:
        base = _serve(server, "/vgg", bodies)
        with pytest.raises(DownloadError) as info:
            flowers.download(root, base_url=base, workers=2, progress=False,
                             sources=_sources(flowers.SOURCES, bodies))
    message = str(info.value)
    assert "cvpr2016_flowers.tar.gz" in message and "datasets.<name>.captions_url" in message
    assert not (root / "images").exists(), "nothing is unpacked when one file is bad"


# ---------------------------------------------------------------------------------------- ImageNet

SYNSETS = [  # (ILSVRC2012_ID, WNID, words, num_children)
    (1, "n01440764", "tench, Tinca tinca", 0),
    (2, "n02012849", "crane", 0),
    (3, "n03126707", "crane", 0),
    (4, "n00001740", "entity", 3),
]
TRUTH = [1, 2, 3, 1, 2]


def _meta_mat() -> bytes:
    return imagenet_meta_mat(SYNSETS)


def _val_images() -> dict[str, bytes]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": _jpeg(i) for i in range(1, len(TRUTH) + 1)}


def _devkit_folder(folder: Path) -> Path:
    write_files(folder, imagenet_val_files(list(_val_images().values()), TRUTH, SYNSETS, devkit="data"))
    return folder


def test_imagenet_missing_folder_gives_instructions(tmp_path):
    with pytest.raises(DownloadError) as info:
        imagenet.download(tmp_path / "out", provided=None)
    message = str(info.value)
    assert "datasets.<name>.provided" in message
    for needle in ("https://image-net.org/signup.php", "2012-downloads.php", "ILSVRC2012_img_val.tar",
                   "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_validation_ground_truth.txt", "meta.mat"):
        assert needle in message
    with pytest.raises(DownloadError, match=r"datasets\.imagenet\.provided=.*nowhere: no such folder"):
        imagenet.download(tmp_path / "out", provided=str(tmp_path / "nowhere"), name="imagenet")
    with pytest.raises(DownloadError, match="no ground truth"):
        imagenet.download(tmp_path / "out", provided=str(tmp_path), expected_images=None)


def test_imagenet_incomplete_folder_names_the_missing_count(tmp_path):
    folder = _devkit_folder(tmp_path / "provided")
    (folder / "val" / "ILSVRC2012_val_00000002.JPEG").unlink()
    (folder / "val" / "ILSVRC2012_val_00000005.JPEG").unlink()
    with pytest.raises(DownloadError) as info:
        imagenet.download(tmp_path / "out", provided=str(folder), expected_images=5)
    message = str(info.value)
    assert "2 of the 5 validation images" in message
    assert "ILSVRC2012_val_00000002.JPEG" in message and "datasets.<name>.provided" in message
    with pytest.raises(DownloadError, match="lists 5 images, not the 50,000"):
        imagenet.download(tmp_path / "out", provided=str(folder))


def test_imagenet_complete_devkit_folder_gives_the_test_split(tmp_path):
    folder = _devkit_folder(tmp_path / "provided")
    root = tmp_path / "out"
    record = imagenet.download(root, provided=str(folder), expected_images=5)
    assert record["n_images"] == 5 and record["n_classes"] == 3
    assert record["files"]["meta.mat"]["sha256"] == hashlib.sha256(_meta_mat()).hexdigest()
    test = imagenet.samples(root, "test")
    assert list(test.columns) == ["sample_id", "image_path", "caption", "labels"]
    assert test["sample_id"].tolist() == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
    assert test["labels"].tolist() == [["tench"], ["crane (n02012849)"], ["crane (n03126707)"], ["tench"],
                                       ["crane (n02012849)"]]
    assert test["caption"].tolist()[:2] == ["a photo of a tench.", "a photo of a crane."]
    assert Path(test["image_path"][0]) == (folder / "val" / "ILSVRC2012_val_00000001.JPEG").resolve()
    train = imagenet.samples(root, "train")
    assert train.empty and list(train.columns) == list(test.columns)
    assert imagenet.hierarchy(root) == {"tench": None, "crane (n02012849)": None, "crane (n03126707)": None}


def test_imagenet_kaggle_layout_and_archives(tmp_path):
    kaggle = tmp_path / "kaggle"
    images = kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    images.mkdir(parents=True)
    for name, data in _val_images().items():
        (images / name).write_bytes(data)
    wnid = {ident: w for ident, w, _, _ in SYNSETS}
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},{wnid[v]} 1 2 3 4 {wnid[v]} 5 6 7 8\n" for i, v in enumerate(TRUTH, 1)))
    (kaggle / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {words}\n" for _, w, words, n in SYNSETS if n == 0))
    kaggle_test = (imagenet.download(tmp_path / "k", provided=str(kaggle), expected_images=5),
                   imagenet.samples(tmp_path / "k", "test"))[1]

    archives = tmp_path / "archives"  # the two files as downloaded from image-net.org
    archives.mkdir()
    (archives / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(_val_images(), mode="w"))
    (archives / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_bytes({
        "ILSVRC2012_devkit_t12/data/meta.mat": _meta_mat(),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
            "".join(f"{v}\n" for v in TRUTH).encode()}))
    root = tmp_path / "a"
    with pytest.raises(DownloadError, match=r"MD5 \w+, expected 29b22e2961454d5413ddabcf34fc5622"):
        imagenet.download(root, provided=str(archives), expected_images=5,
                          sources={**imagenet.SOURCES, "devkit": {**imagenet.SOURCES["devkit"], "md5": None},
                                   "val_images": {**imagenet.SOURCES["val_images"], "size": None}})
    assert not (root / "val").exists()
    fixture_sources = {key: {**source, "size": None, "md5": None} for key, source in imagenet.SOURCES.items()}
    record = imagenet.download(root, provided=str(archives), expected_images=5, sources=fixture_sources)
    assert (root / "val" / "ILSVRC2012_val_00000003.JPEG").is_file()
    assert record["files"]["val_images"]["md5"] == hashlib.md5(
        (archives / "ILSVRC2012_img_val.tar").read_bytes()).hexdigest()
    archive_test = imagenet.samples(root, "test")
    assert archive_test["labels"].tolist() == kaggle_test["labels"].tolist()
    assert archive_test["sample_id"].tolist() == kaggle_test["sample_id"].tolist()


def test_manifest_options_reach_the_source_and_unknown_ones_are_named(tmp_path):
    bodies = _coco_bodies()
    root = tmp_path / "coco"
    with loopback_server() as server:
        coco.download(root, base_url=_serve(server, "/coco", bodies), workers=2, progress=False,
                      sources=_sources(coco.SOURCES, bodies))
    source = source_for("coco2017")
    assert len(source.samples(root, "train", {"captions": "each"})) == 5
    assert len(source.samples(root, "train")) == 3
    with pytest.raises(ConfigError, match=r"manifest_options: \['colour'\] are not options of the coco2017"):
        source.samples(root, "train", {"colour": "red"})
