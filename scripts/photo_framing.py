"""How faces cut from photos compare with FER2013's own, for `predict`'s pipeline.

Each face of a split is enlarged (bicubic, --upscale times) into a photo on a black background, found
with predict's face detector, cut out at the detector's box and resized back to 48x48 with each
resize method; the model classifies the FER2013 faces as they are, the enlarged faces resized back
whole (what resizing alone costs) and the detector's crops (resizing and the detector's framing), and
averages its probabilities over sets of framings around the detector's box (`predict --reframe`):

    python scripts/photo_framing.py --split=val [--tta=flip] --output=results/photo_framing/val.json

Writes the accuracies, on the faces the detector finds, with the command, commit and device.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image
from skimage.transform import resize as sk_resize

from ferjax import checkpoint, data, host_memory, inference, loop, train


def _pil(method):
    def resize(image_HxW, size):
        return np.asarray(Image.fromarray(np.asarray(image_HxW, np.float32)).resize((size, size), method), np.float32)
    return resize


RESIZE_METHODS = {
    "skimage_gaussian": lambda image, size: sk_resize(image, (size, size), order=1, anti_aliasing=True,
                                                      preserve_range=True),
    "pil_box": _pil(Image.Resampling.BOX),
    "pil_bicubic": _pil(Image.Resampling.BICUBIC),
    "pil_lanczos": _pil(Image.Resampling.LANCZOS),
}


# Views of each detector box, (scale, dx, dy) as inference.crop_face takes them, whose probabilities are averaged.
FRAMING_SETS = {
    "box": inference.framing_grid((1.0,), ()),
    "box_x1.1": inference.framing_grid((1.1,), ()),
    "x1.0_x1.1": inference.framing_grid((1.0, 1.1), ()),
    "x1.0_x1.1_moved_5%": inference.framing_grid((1.0, 1.1), (0.05,)),
    "x0.9_to_x1.2_moved_5%": inference.framing_grid((0.9, 1.0, 1.1, 1.2), (0.05,)),
    "x0.9_to_x1.2_moved_5%_10%": inference.framing_grid((0.9, 1.0, 1.1, 1.2), (0.05, 0.1)),
    "x0.8_to_x1.3_moved_5%": inference.framing_grid((0.8, 0.9, 1.0, 1.1, 1.2, 1.3), (0.05,)),
    "x0.8_to_x1.3_moved_5%_10%": inference.framing_grid((0.8, 0.9, 1.0, 1.1, 1.2, 1.3), (0.05, 0.1)),
    "reframe": inference.REFRAMINGS,
}


def _as_faces(images):
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--checkpoint", default=None, help="model to classify with (default: the bundled one)")
    parser.add_argument("--tta", default="none", choices=train.TTA_MODES, help="the model's test-time augmentation")
    parser.add_argument("--upscale", type=int, default=4, help="how many times each face is enlarged")
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of this many faces")
    parser.add_argument("--output", required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()
    try:
        faces = data.stratified_subset(data.load().split(args.split), args.limit)
        predictor = inference.Predictor(args.checkpoint, tta=args.tta)
    except (data.DataError, checkpoint.CheckpointError) as e:
        sys.exit(f"error: {e}")

    size, border = data.IMAGE_SIZE * args.upscale, data.IMAGE_SIZE * args.upscale // 2
    framings = sorted({framing for views in FRAMING_SETS.values() for framing in views})
    found, enlarged, crops, framed = [], [], [], []
    start = time.time()
    for i, face in enumerate(faces.images):
        photo = np.clip(sk_resize(face.astype(np.float32), (size, size), order=3, preserve_range=True), 0, 255)
        canvas = np.pad(photo, border)
        boxes = inference.detect_faces(canvas, 0.1)
        if boxes:
            x, y, w, h = boxes[0]
            found.append(i)
            enlarged.append(photo)
            crops.append(canvas[y:y + h, x:x + w])
            framed.append([inference.crop_face(canvas, boxes[0], *framing) for framing in framings])
        if (i + 1) % 500 == 0 or i + 1 == len(faces):
            rate = (i + 1) / (time.time() - start)
            print(f"{i + 1}/{len(faces)} faces, {len(found)} found, {rate:.0f} faces/s, "
                  f"ETA {(len(faces) - i - 1) / rate:.0f} s", flush=True)
    if not found:
        sys.exit(f"error: the face detector found none of the {len(faces)} faces")
    labels = faces.labels[found]

    def accuracy(faces_Nx48x48):
        return float(np.mean(predictor.classify(faces_Nx48x48).argmax(-1) == labels))

    framed = np.stack(framed)
    framed_probs = predictor.classify(framed.reshape(-1, *framed.shape[2:])).reshape(*framed.shape[:2], -1)

    results = {
        "split": args.split, "tta": args.tta, "faces": len(faces), "detected": len(found), "upscale": args.upscale,
        "model": args.checkpoint or "bundled", "fingerprint": inference.weights_fingerprint(predictor.state),
        "accuracy_fer2013_faces": accuracy(faces.images[found]),
        "accuracy_enlarged_faces_resized": {}, "accuracy_detector_crops_resized": {},
        "accuracy_detector_framings": {
            name: float(np.mean(framed_probs[:, [framings.index(f) for f in views]].mean(1).argmax(-1) == labels))
            for name, views in FRAMING_SETS.items()},
        "device": loop.device_description(), "commit": loop.git_commit(), "command": " ".join(["python", *sys.argv]),
    }
    for name, resize in RESIZE_METHODS.items():
        for key, images in (("accuracy_enlarged_faces_resized", enlarged), ("accuracy_detector_crops_resized", crops)):
            results[key][name] = accuracy(_as_faces([resize(image, data.IMAGE_SIZE) for image in images]))
    print(json.dumps(results, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
