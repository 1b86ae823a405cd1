"""Emotions of the faces in photos: python -m experiments.predict --image=photo.jpg [--image=DIR ...]

Without --checkpoint the model bundled with ferjax is used. Prints a table (or one JSON object
per file with --json); --output=DIR writes each photo with boxes and labels drawn on it. Bad
files get one line each and a non-zero exit status; the other files are still processed.
"""

import json
import os
import sys

from absl import app, flags

from experiments.flags import quiet_libraries
from ferjax import checkpoint, inference

flags.DEFINE_multi_string("image", [], "image file, folder or glob pattern (repeatable)")
flags.DEFINE_string("checkpoint", None, "training workdir, checkpoint folder or exported model (default: bundled)")
flags.DEFINE_bool("no_detect", False, "treat each image as an already-cropped face")
flags.DEFINE_bool("json", False, "one JSON object per input file per line on stdout")
flags.DEFINE_string("output", None, "write annotated copies of the photos to this folder")
flags.DEFINE_float("min_face", 0.1, "smallest face to detect, as a fraction of the image's shorter side")
FLAGS = flags.FLAGS


def _table_rows(path: str, faces: list[dict]) -> list[str]:
    rows = []
    for face in faces:
        top3 = sorted(face["probs"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(f"{path}\t{face['box']}\t{face['emotion']}\t" + ", ".join(f"{k} {v:.2f}" for k, v in top3))
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_libraries()
    if not FLAGS.image:
        print("error: pass --image=PATH (a file, folder or glob; repeatable)", file=sys.stderr)
        return 1
    if not 0 < FLAGS.min_face <= 1:
        print(f"error: --min_face={FLAGS.min_face}: must be in (0, 1]", file=sys.stderr)
        return 1
    try:
        predictor = inference.Predictor(FLAGS.checkpoint, min_face_fraction=FLAGS.min_face)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if FLAGS.output:
        os.makedirs(FLAGS.output, exist_ok=True)
    paths = inference.expand_inputs(FLAGS.image)
    failures = 0
    if not FLAGS.json:
        print("file\tbox [x, y, w, h]\temotion\ttop-3 probabilities")
    for i, path in enumerate(paths, start=1):
        if len(paths) > 1:
            print(f"\r[{i}/{len(paths)}] {os.path.basename(path)[:40]:<40}", end="", file=sys.stderr, flush=True)
        try:
            image = inference.read_image(path)
            faces = predictor.predict(image, detect=not FLAGS.no_detect)
            if not faces:
                raise inference.PredictError(f"{path}: no face found (try --min_face=0.05, or --no_detect for a "
                                             "cropped face)")
        except inference.PredictError as e:
            failures += 1
            if len(paths) > 1:
                print(file=sys.stderr)
            print(f"error: {e}", file=sys.stderr)
            if FLAGS.json:
                print(json.dumps({"path": path, "error": str(e)}))
            continue
        if FLAGS.json:
            print(json.dumps({"path": path, "faces": faces}))
        else:
            print("\n".join(_table_rows(path, faces)))
        if FLAGS.output:
            from PIL import Image

            out = os.path.join(FLAGS.output, os.path.splitext(os.path.basename(path))[0] + "_emotions.png")
            Image.fromarray(inference.annotate(image, faces)).save(out)
    if len(paths) > 1:
        print(file=sys.stderr)
    if failures:
        print(f"{failures} of {len(paths)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(main)
