"""The FER2013 loader in its three forms, its errors, the cache, batching and splits."""

import os

import numpy as np
import pytest
from PIL import Image

from ferjax import data

CSV_HEADER = "emotion,pixels,Usage"


def _faces(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 48, 48), dtype=np.uint8)


def write_folders(root, faces_per_class=2):
    """A tiny image-folder FER2013: every class in every split; PNG so pixels survive exactly."""
    written = {}
    faces = _faces(3 * 7 * faces_per_class)
    i = 0
    for usage, top in (("Training", "train"), ("PublicTest", "test"), ("PrivateTest", "test")):
        for name in data.CLASS_NAMES:
            os.makedirs(root / top / name, exist_ok=True)
            for _ in range(faces_per_class):
                path = root / top / name / f"{usage}_{1000 + i}.png"
                Image.fromarray(faces[i]).save(path)
                written[f"{top}/{name}/{path.name}"] = (faces[i], data.CLASS_NAMES.index(name))
                i += 1
    return written


def write_csv(path, rows, header=CSV_HEADER):
    with open(path, "w") as f:
        f.write(header + "\n")
        for label, pixels, usage in rows:
            f.write(f"{label},{' '.join(map(str, pixels))},{usage}\n")


def csv_rows(faces_per_split=3):
    faces = _faces(3 * faces_per_split, seed=1)
    usages = ["Training"] * faces_per_split + ["PublicTest"] * faces_per_split + ["PrivateTest"] * faces_per_split
    return [(i % 7, face.ravel(), usage) for i, (face, usage) in enumerate(zip(faces, usages))]


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path, monkeypatch):
    """Tiny fixtures cache under tmp_path; the real data keeps the shared cache."""
    if "fer2013" not in request.fixturenames and "fer2013_dir" not in request.fixturenames:
        monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))


def test_image_folders_load_labels_splits_and_pixels(tmp_path):
    written = write_folders(tmp_path / "fer")
    dataset = data.load(str(tmp_path / "fer"))
    assert [len(dataset.split(s)) for s in data.SPLITS] == [14, 14, 14]
    for split in data.SPLITS:
        s = dataset.split(split)
        for face, label, source in zip(s.images, s.labels, s.sources):
            expected_face, expected_label = written[source]
            assert label == expected_label
            np.testing.assert_array_equal(face, expected_face)
        usage = {"train": "Training_", "val": "PublicTest_", "test": "PrivateTest_"}[split]
        assert all(os.path.basename(src).startswith(usage) for src in s.sources)


@pytest.mark.parametrize("csv_name,header",
                         [("fer2013.csv", CSV_HEADER), ("icml_face_data.csv", "emotion, Usage, pixels")])
def test_csv_forms(tmp_path, csv_name, header):
    rows = csv_rows()
    if header.startswith("emotion, Usage"):  # Kaggle's variant: other column order, leading spaces
        with open(tmp_path / csv_name, "w") as f:
            f.write(header + "\n")
            for label, pixels, usage in rows:
                f.write(f"{label},{usage},{' '.join(map(str, pixels))}\n")
    else:
        write_csv(tmp_path / csv_name, rows)
    dataset = data.load(str(tmp_path))
    assert [len(dataset.split(s)) for s in data.SPLITS] == [3, 3, 3]
    np.testing.assert_array_equal(dataset.train.images[1].ravel(), rows[1][1])
    assert list(dataset.val.labels) == [3, 4, 5]
    assert dataset.test.sources[0] == "csv:8"  # line 8 of the file: header + 6 rows before it


def test_colour_and_odd_sized_images_are_converted(tmp_path):
    write_folders(tmp_path / "fer", faces_per_class=1)
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[..., 1] = 200  # pure green: luminosity 0.7152 * 200 = 143.04
    Image.fromarray(rgb).save(tmp_path / "fer" / "train" / "happy" / "Training_9.png")
    dataset = data.load(str(tmp_path / "fer"))
    face = dataset.train.images[list(dataset.train.sources).index("train/happy/Training_9.png")]
    assert face.shape == (48, 48) and face.dtype == np.uint8
    assert np.all(face == 143)


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError, match=r"not found at .*data/fer2013 \(the default\).*Kaggle"):
        data.load()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(data.DataError, match=r"elsewhere \(\$FER2013_DIR\)"):
        data.load()


def test_truncated_and_non_image_files_are_named(tmp_path):
    root = tmp_path / "fer"
    write_folders(root, faces_per_class=1)
    bad = root / "train" / "sad" / "Training_77.jpg"
    Image.fromarray(_faces(1)[0]).save(bad)
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    with pytest.raises(data.DataError, match="Training_77.jpg: unreadable image"):
        data.load(str(root))
    bad.write_text("not an image")
    with pytest.raises(data.DataError, match="Training_77.jpg: unreadable image"):
        data.load(str(root))


def test_skip_bad_reports_every_skipped_file(tmp_path):
    root = tmp_path / "fer"
    write_folders(root, faces_per_class=1)
    (root / "train" / "sad" / "Training_77.jpg").write_text("not an image")
    dataset = data.load(str(root), skip_bad=True)
    assert len(dataset.train) == 7
    assert len(dataset.skipped) == 1 and "Training_77.jpg" in dataset.skipped[0]


def test_unknown_class_folder_and_missing_prefix(tmp_path):
    root = tmp_path / "fer"
    write_folders(root, faces_per_class=1)
    os.makedirs(root / "train" / "contempt")
    with pytest.raises(data.DataError, match="unknown class folder 'contempt'"):
        data.load(str(root))
    os.rmdir(root / "train" / "contempt")
    Image.fromarray(_faces(1)[0]).save(root / "train" / "fear" / "face.png")
    with pytest.raises(data.DataError, match="face.png: file name lacks a split prefix"):
        data.load(str(root))


@pytest.mark.parametrize("row,message", [
    ((3, np.zeros(2303, int), "Training"), r"fer2013.csv:3: bad row \(2303 pixels, expected 2304\)"),
    ((7, np.zeros(2304, int), "Training"), r"fer2013.csv:3: bad row \(label '7' outside 0-6\)"),
    ((1, np.zeros(2304, int), "Holdout"), r"fer2013.csv:3: bad row \(Usage 'Holdout'"),
])
def test_bad_csv_rows_are_named(tmp_path, row, message):
    write_csv(tmp_path / "fer2013.csv", csv_rows(1)[:1] + [row] + csv_rows(1)[1:])
    with pytest.raises(data.DataError, match=message):
        data.load(str(tmp_path))
    dataset = data.load(str(tmp_path), skip_bad=True)
    assert len(dataset.skipped) == 1 and sum(len(dataset.split(s)) for s in data.SPLITS) == 3


def test_empty_split_is_an_error(tmp_path):
    write_csv(tmp_path / "fer2013.csv", [r for r in csv_rows() if r[2] != "PrivateTest"])
    with pytest.raises(data.DataError, match="the test split \\(PrivateTest\\) is empty"):
        data.load(str(tmp_path))


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path):
    root = tmp_path / "fer"
    write_folders(root, faces_per_class=1)
    first = data.load(str(root))
    cache_files = os.listdir(tmp_path / "cache")
    assert len(cache_files) == 1
    again = data.load(str(root))
    np.testing.assert_array_equal(again.train.images, first.train.images)
    assert os.listdir(tmp_path / "cache") == cache_files  # read, not rewritten under a new key
    changed = root / "train" / "angry" / "Training_1000.png"
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    reloaded = data.load(str(root))
    assert np.all(reloaded.train.images[list(reloaded.train.sources).index("train/angry/Training_1000.png")] == 7)


def test_batches_cover_every_sample_once_with_padding_masked(rng):
    split = data.Split(_faces(10), np.arange(10, dtype=np.int32) % 7, np.array([str(i) for i in range(10)]))
    batches = list(data.batches(split, 4, shuffle_seed=3))
    assert len(batches) == 3 and all(b["image"].shape == (4, 48, 48) for b in batches)
    seen = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert sorted(seen.tolist()) == sorted(split.labels.tolist())
    assert batches[-1]["mask"].tolist() == [1, 1, 0, 0]
    unshuffled = np.concatenate([b["image"][b["mask"] > 0] for b in data.batches(split, 4)])
    np.testing.assert_array_equal(unshuffled, split.images)


def test_stratified_kfold_partitions_and_keeps_class_shares(rng):
    labels = rng.choice(7, size=700, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17])
    folds = data.stratified_kfold(labels, 5, seed=1)
    all_val = np.concatenate([val for _, val in folds])
    assert sorted(all_val.tolist()) == list(range(700))
    overall = np.bincount(labels, minlength=7) / len(labels)
    for train_index, val_index in folds:
        assert len(np.intersect1d(train_index, val_index)) == 0
        assert abs(len(val_index) - 140) <= 1
        share = np.bincount(labels[val_index], minlength=7) / len(val_index)
        assert np.abs(share - overall).max() < 0.01
    assert [v.tolist() for _, v in folds] == [v.tolist() for _, v in data.stratified_kfold(labels, 5, seed=1)]


def test_stratified_subset_keeps_class_shares(fer2013):
    subset = data.stratified_subset(fer2013.train, 700, seed=0)
    assert len(subset) == 700
    share = subset.class_counts() / 700
    overall = fer2013.train.class_counts() / len(fer2013.train)
    assert np.abs(share - overall).max() < 0.005


# The real FER2013, from FER2013_DIR.
EXPECTED_COUNTS = {  # per class in CLASS_NAMES order, from the data set's own documentation
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "val": [467, 56, 496, 895, 653, 415, 607],
    "test": [491, 55, 528, 879, 594, 416, 626],
}


def test_real_fer2013_counts_labels_and_pixels(fer2013):
    assert [len(fer2013.split(s)) for s in data.SPLITS] == [28709, 3589, 3589]
    for split, counts in EXPECTED_COUNTS.items():
        assert fer2013.split(split).class_counts().tolist() == counts
    for split in data.SPLITS:
        s = fer2013.split(split)
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (48, 48)
        assert s.images.min() == 0 and s.images.max() == 255
        for source, label in zip(s.sources[::500], s.labels[::500]):
            assert data.CLASS_NAMES[label] == source.split(os.sep)[1]  # folder name matches the label
    sources = list(fer2013.train.sources)
    assert fer2013.train.labels[sources.index("train/happy/Training_10019449.jpg")] == 3
    assert fer2013.train.labels[sources.index("train/neutral/" + sorted(
        s.split("/")[-1] for s in sources if s.startswith("train/neutral/"))[0])] == 6
    assert all(src.split("/")[-1].startswith("PublicTest_") for src in fer2013.val.sources)
    assert all(src.split("/")[-1].startswith("PrivateTest_") for src in fer2013.test.sources)


def test_data_check_command(fer2013_dir, capsys):
    assert data.main([f"--data_dir={fer2013_dir}"]) == 0
    out = capsys.readouterr().out
    assert "| total | 28709 | 3589 | 3589 |" in out and "| 3 happy | 7215 | 895 | 879 |" in out
    assert data.main(["--data_dir=/no/such/folder"]) == 1
    assert "error: FER2013 not found at /no/such/folder" in capsys.readouterr().out
