"""Emotions of the faces in photos: python -m experiments.predict photo.jpg [DIR 'albums/*.png' ...]

The photos are the arguments, or --image flags (repeatable), or both.

Without --checkpoint the model bundled with ferjax is used; --tta=flip or --tta=tencrop averages over
test-time augmentations, --reframe over framings of each detected face. Prints a table (or one JSON
object per file with --json); --output=DIR writes each photo with boxes and labels drawn on it. Bad files
get one line each and a non-zero exit status; the other files are still processed.
"""

import json
import os
import sys

from absl import app, flags

from experiments.flags import start
from ferjax import checkpoint, inference, train

flags.DEFINE_multi_string("image", [], "image file, folder or glob pattern (repeatable; the script's arguments "
                          "are taken as such too)")
flags.DEFINE_string("checkpoint", None, "training workdir, checkpoint folder or exported model (default: bundled)")
flags.DEFINE_bool("no_detect", False, "treat each image as an already-cropped face")
flags.DEFINE_bool("json", False, "one JSON object per input file per line on stdout")
flags.DEFINE_string("output", None, "write annotated copies of the photos to this folder")
flags.DEFINE_float("min_face", 0.1, "smallest face to detect, as a fraction of the image's shorter side")
flags.DEFINE_enum("tta", "none", train.TTA_MODES, "test-time augmentation: average over the mirrored face "
                  "('flip') or ten windows ('tencrop'), more accurate and slower")
flags.DEFINE_bool("reframe", False, "also average over each face's box (the detector's, or the whole image "
                  "with --no_detect) scaled and moved a little (inference.REFRAMINGS): 36 views of each face, "
                  "more accurate on faces cut from photos")
FLAGS = flags.FLAGS


def _table_rows(path: str, faces: list[dict]) -> list[str]:
    rows = []
    for face in faces:
        top3 = sorted(face["probs"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(f"{path}\t{face['box']}\t{face['emotion']}\t" + ", ".join(f"{k} {v:.2f}" for k, v in top3))
    return rows


class Progress:
    """A one-line [i/N] counter on a terminal's stderr, cleared before any other output."""

    def __init__(self, total: int):
        self.total, self.active = total, total > 1 and sys.stderr.isatty()

    def show(self, i: int, path: str) -> None:
        if self.active:
            print(f"\r[{i}/{self.total}] {os.path.basename(path)[:50]:<50}", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.active:
            print("\r" + " " * 64 + "\r", end="", file=sys.stderr, flush=True)


def main(argv):
    start(argv[:1])
    images = FLAGS.image + argv[1:]
    if not images:
        print("error: name the photos: python -m experiments.predict PATH ... (files, folders or globs)",
              file=sys.stderr)
        return 1
    if not 0 < FLAGS.min_face <= 1:
        print(f"error: --min_face={FLAGS.min_face}: must be in (0, 1]", file=sys.stderr)
        return 1
    try:
        predictor = inference.Predictor(FLAGS.checkpoint, min_face_fraction=FLAGS.min_face, tta=FLAGS.tta,
                                        reframe=FLAGS.reframe)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if FLAGS.output:
        os.makedirs(FLAGS.output, exist_ok=True)
    paths = inference.expand_inputs(images)
    failures = 0
    if not FLAGS.json:
        print("file\tbox [x, y, w, h]\temotion\ttop-3 probabilities")
    progress = Progress(len(paths))
    for i, path in enumerate(paths, start=1):
        progress.show(i, path)
        try:
            image = inference.read_image(path)
            faces = predictor.predict(image, detect=not FLAGS.no_detect)
            if not faces:
                raise inference.PredictError(f"{path}: no face found (try --min_face=0.05, or --no_detect for a "
                                             "cropped face)")
        except inference.PredictError as e:
            failures += 1
            progress.clear()
            print(f"error: {e}", file=sys.stderr)
            if FLAGS.json:
                print(json.dumps({"path": path, "error": str(e)}))
            continue
        progress.clear()
        if FLAGS.json:
            print(json.dumps({"path": path, "faces": faces}))
        else:
            print("\n".join(_table_rows(path, faces)))
        if FLAGS.output:
            from PIL import Image

            out = os.path.join(FLAGS.output, os.path.splitext(os.path.basename(path))[0] + "_emotions.png")
            Image.fromarray(inference.annotate(image, faces)).save(out)
    progress.clear()
    if failures:
        print(f"{failures} of {len(paths)} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(main)
