"""Emotions in real photos with the bundled model: detection, preprocessing, outputs and bad inputs."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from script_loader import load_script
from skimage import data as skdata

import ferjax
from ferjax import data, inference, preprocess, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def predictor():
    return inference.default_predictor()


def test_bundled_model_is_small_and_described():
    size = os.path.getsize(inference.DEFAULT_MODEL + ".msgpack")
    assert size <= 10_000_000
    with open(inference.DEFAULT_MODEL + ".json") as f:
        meta = json.load(f)
    assert meta["class_names"] == list(data.CLASS_NAMES) and "config" in meta


def test_pick_storage_takes_the_best_val_that_fits_and_the_smaller_on_ties():
    half = {"storage": "float16", "bytes": 9_000_000, "val_accuracy": 0.6807}
    full = {"storage": "float32", "bytes": 17_700_000, "val_accuracy": 0.6810}
    assert inference.pick_storage([half, full]) is full
    assert inference.pick_storage([half, full], max_bytes=10_000_000) is half
    assert inference.pick_storage([half, {**full, "val_accuracy": 0.6807}]) is half
    with pytest.raises(ValueError, match="no storage fits 5.0 MB"):
        inference.pick_storage([half, full], max_bytes=5_000_000)


def test_fingerprint_names_the_weights_not_the_files(predictor, tmp_path):
    fingerprint = inference.weights_fingerprint(predictor.state)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    inference.export_model(predictor.state, predictor.meta, str(tmp_path / "copy"), np.float32)
    assert inference.weights_fingerprint(inference.load_model(str(tmp_path / "copy"))[0]) == fingerprint
    leaves, treedef = jax.tree.flatten(predictor.state.params)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].add(1e-3)  # one weight of millions
    nudged = predictor.state.replace(params=jax.tree.unflatten(treedef, leaves))
    assert inference.weights_fingerprint(nudged) != fingerprint


def test_astronaut_is_one_happy_face():
    faces = ferjax.predict(skdata.astronaut())
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face["box"]
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200  # around her face, upper middle of the photo
    assert face["emotion"] == "happy"
    assert set(face["probs"]) == set(data.CLASS_NAMES)
    assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-3)


def test_gray_and_colour_inputs_agree(predictor):
    photo = skdata.astronaut()
    gray = inference.to_gray(photo)
    assert predictor.predict(gray)[0]["box"] == predictor.predict(photo)[0]["box"]


def test_no_detect_on_fer2013_test_faces(predictor, fer2013):
    faces = data.stratified_subset(fer2013.test, 200)
    probs = predictor.classify(faces.images)
    assert probs.shape == (200, 7)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    accuracy = float((probs.argmax(1) == faces.labels).mean())
    assert accuracy > 0.4  # far above the 25% of always answering 'happy'
    single = predictor.predict(faces.images[0], detect=False)
    assert len(single) == 1 and single[0]["box"] == [0, 0, 48, 48]
    assert single[0]["probs"][single[0]["emotion"]] == pytest.approx(probs[0].max(), abs=1e-3)


def test_classify_takes_any_number_of_faces_in_bounded_chunks(predictor, fer2013, monkeypatch):
    faces = data.stratified_subset(fer2013.test, 70).images[:11]
    one_by_one = np.concatenate([predictor.classify(face[None]) for face in faces])
    shapes = []
    probs_fn = predictor._probs
    monkeypatch.setattr(predictor, "_probs", lambda state, x: shapes.append(len(x)) or probs_fn(state, x))
    monkeypatch.setattr(inference, "CLASSIFY_BATCH", 4)
    np.testing.assert_allclose(predictor.classify(faces), one_by_one, atol=1e-5)
    assert shapes == [4, 4, 4]  # 4 + 4 + 3, the last chunk filled up to 4
    assert predictor.classify(faces[:0]).shape == (0, 7)


def test_crop_face_scales_and_moves_the_box_and_repeats_the_border_past_the_image():
    gray = np.random.default_rng(0).uniform(0, 255, (120, 90)).astype(np.float32)
    np.testing.assert_array_equal(inference.crop_face(gray, (10, 20, 50, 50)),
                                  preprocess.to_face(gray[20:70, 10:60], 48))
    np.testing.assert_array_equal(inference.crop_face(gray, (20, 30, 40, 40), scale=1.5, dx=0.25, dy=-0.25),
                                  preprocess.to_face(gray[10:70, 20:80], 48))
    np.testing.assert_array_equal(inference.crop_face(gray, (0, 0, 90, 120)), preprocess.to_face(gray, 48))
    past_the_corner = np.pad(gray, ((0, 10), (0, 10)), mode="edge")[70:130, 40:100]
    np.testing.assert_array_equal(inference.crop_face(gray, (40, 70, 60, 60)), preprocess.to_face(past_the_corner, 48))


def test_framing_grid_moves_every_scale_of_the_box_each_way():
    views = inference.framing_grid((1.0, 1.1), (0.05,))
    assert len(views) == 10 and views[:5] == ((1.0, 0, 0), (1.0, -0.05, 0), (1.0, 0.05, 0), (1.0, 0, -0.05),
                                              (1.0, 0, 0.05))
    assert views[5] == (1.1, 0, 0)
    assert len(inference.framing_grid((0.9, 1.0), (0.05, 0.1))) == 18


def test_reframe_averages_the_views_around_each_detected_box(predictor):
    photo = skdata.astronaut()
    gray = inference.to_gray(photo)
    (box,) = inference.detect_faces(gray)
    views = np.stack([inference.crop_face(gray, box, *framing) for framing in inference.REFRAMINGS])
    expected = predictor.classify(views).mean(0)
    (face,) = inference.Predictor(reframe=True).predict(photo)
    assert face["box"] == list(box)
    np.testing.assert_allclose([face["probs"][name] for name in data.CLASS_NAMES], expected, atol=1e-4)


def test_flip_tta_averages_the_face_and_its_mirror(predictor, fer2013):
    faces = data.stratified_subset(fer2013.test, 70).images
    flip = inference.Predictor(tta="flip")
    expected = (predictor.classify(faces) + predictor.classify(faces[:, :, ::-1])) / 2
    np.testing.assert_allclose(flip.classify(faces), expected, atol=1e-5)
    tencrop = inference.Predictor(tta="tencrop").classify(faces)
    np.testing.assert_allclose(tencrop.sum(1), 1, atol=1e-4)
    assert not np.allclose(tencrop, expected, atol=1e-3)  # other views than the flip's two
    with pytest.raises(ValueError, match="tta='tencorp'"):
        inference.Predictor(tta="tencorp")
    with pytest.raises(ValueError, match="tta='tencorp'"):  # not a silent ten-crop
        train.tta_log_probs(predictor.state, {"image": faces}, tta="tencorp")


def test_expand_inputs_reads_folders_and_globs(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert inference.expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert inference.expand_inputs([str(tmp_path / "*.png")]) == [str(tmp_path / "b.png")]
    assert inference.expand_inputs([str(tmp_path / "*.gif")]) == [str(tmp_path / "*.gif")]  # reported as missing


def test_cli_json_output_bad_files_and_annotations(tmp_path, fer2013):
    good = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(good)
    face = tmp_path / "face.png"
    Image.fromarray(fer2013.test.images[0]).save(face)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(skdata.astronaut()).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(blank)
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 7000)).save(huge)
    missing = tmp_path / "missing.jpg"
    paths = [good, not_image, truncated, blank, huge, missing]
    run = subprocess.run([sys.executable, "-m", "experiments.predict", "--json", f"--output={tmp_path / 'out'}",
                          *[f"--image={p}" for p in paths]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in paths]
    assert records[0]["faces"][0]["emotion"] == "happy"
    assert set(records[0]["faces"][0]) == {"box", "emotion", "probs"} and len(records[0]["faces"][0]["box"]) == 4
    errors = {os.path.basename(r["path"]): r["error"] for r in records[1:]}
    assert "not a readable image" in errors["notes.jpg"]
    assert "not a readable image" in errors["truncated.jpg"]
    assert "no face found" in errors["blank.png"]
    assert "image too large (8000x7000" in errors["huge.png"]
    assert "no such file" in errors["missing.jpg"]
    error_lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 5 and "Traceback" not in run.stderr
    annotated = np.asarray(Image.open(tmp_path / "out" / "astronaut_emotions.png"))
    assert annotated.shape == (512, 512, 3) and not np.array_equal(annotated, skdata.astronaut())

    # The photos may also be plain arguments, before or among the flags.
    cropped = subprocess.run([sys.executable, "-m", "experiments.predict", str(face), "--no_detect", "--tta=tencrop"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cropped.returncode == 0, cropped.stderr
    assert str(face) in cropped.stdout and "[0, 0, 48, 48]" in cropped.stdout


def test_unreadable_checkpoint_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "experiments.predict", f"--checkpoint={tmp_path}/nothing",
                          "--image=x.jpg"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error:") and "nothing" in run.stderr and "Traceback" not in run.stderr


def test_photo_framing_scores_detector_crops_with_every_resize_method(tmp_path, fer2013_dir, monkeypatch, capsys):
    photo_framing = load_script("photo_framing")
    output = tmp_path / "val.json"
    monkeypatch.setenv(data.DATA_DIR_ENV, fer2013_dir)
    photo_framing.main(["--split=val", "--limit=28", f"--output={output}"])
    results = json.loads(output.read_text())
    assert results["faces"] == 28 and 0 < results["detected"] <= 28
    with open(inference.DEFAULT_MODEL + ".json") as f:  # names the bundled model of the day, not just "bundled"
        assert results["fingerprint"] == json.load(f)["card"]["fingerprint"]
    for key in ("accuracy_enlarged_faces_resized", "accuracy_detector_crops_resized"):
        assert set(results[key]) == set(photo_framing.RESIZE_METHODS)
        assert all(0 <= accuracy <= 1 for accuracy in results[key].values())
    monkeypatch.setattr(inference, "detect_faces", lambda *args: [])
    with pytest.raises(SystemExit, match="error: the face detector found none of the 7 faces"):
        photo_framing.main(["--split=val", "--limit=7", f"--output={output}"])
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="error: .*missing"):
        photo_framing.main(["--split=val", f"--output={output}"])
