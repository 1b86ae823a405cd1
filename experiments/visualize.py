"""Visualise what a trained network learned: python -m experiments.visualize --workdir=runs/stn

--workdir also takes an exported model (the path without .msgpack), the bundled one among them.

Writes feature maps of every conv layer, first-layer filters, the spatial transformer's input
beside its warped face (attention models) and per-class gradient saliency maps as PNGs. For
attention models also attention.json: how theta warps every face of the split, how many units
of the localisation net are live, and the split's accuracy and loss with theta's translation moved
by each of --translation_offsets pixels along x and along y (translation_profile). For every model
tilt_profile.json: the split's accuracy and loss with each face turned by each of --tilt_degrees, and
for attention models the rotation their theta answers with (tilt_profile), and zoom_profile.json: the
same with each face magnified by each of --zoom_factors, and the magnification theta answers with.
"""

import json
import os
import sys

from absl import app, flags

from experiments.flags import default_output, define_data_dir_flag, start
from ferjax import checkpoint, data, features, inference, visualize

flags.DEFINE_string("workdir", None, "training workdir (its best checkpoint), a checkpoint folder, or an exported "
                    "model, e.g. ferjax/assets/default_model")
define_data_dir_flag()
flags.DEFINE_enum("split", "val", data.SPLITS, "which split the example faces come from")
flags.DEFINE_integer("faces_per_class", 2, "example faces per class", lower_bound=1)
flags.DEFINE_list("translation_offsets", [str(o) for o in visualize.QUARTER_PIXEL_OFFSETS],
                  "attention models: pixels by which theta's translation is moved to score the split; empty: none")
flags.DEFINE_list("tilt_degrees", [f"{d:g}" for d in visualize.TILT_DEGREES],
                  "degrees by which every face of the split is turned to score it (tilt_profile); empty: none")
flags.DEFINE_list("zoom_factors", [f"{z:g}" for z in visualize.ZOOM_FACTORS],
                  "factors by which every face of the split is magnified to score it (zoom_profile); empty: none")
flags.DEFINE_string("output", None, "output folder (default: <workdir>/visualize; for an exported model "
                    "<name>_visualize in the working directory)")
FLAGS = flags.FLAGS


def main(argv):
    start(argv)
    if not FLAGS.workdir:
        print("error: pass --workdir=DIR (a training workdir, checkpoint folder or exported model)", file=sys.stderr)
        return 1
    numbers = {}
    for flag in ("translation_offsets", "tilt_degrees", "zoom_factors"):
        try:
            numbers[flag] = [float(value) for value in FLAGS[flag].value]
        except ValueError:
            print(f"error: --{flag}={','.join(FLAGS[flag].value)}: not a list of numbers", file=sys.stderr)
            return 1
    if any(factor <= 0 for factor in numbers["zoom_factors"]):
        print(f"error: --zoom_factors={','.join(FLAGS.zoom_factors)}: factors must be positive", file=sys.stderr)
        return 1
    offsets_px = numbers["translation_offsets"]
    try:
        state, meta = inference.load_model(FLAGS.workdir)
        split = data.load(FLAGS.data_dir).split(FLAGS.split)
    except (data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    config = meta["config"]

    def hog_of(images):
        if not meta.get("hog_dim"):
            return None
        return features.cached_hog_pair(images, config["hog_orientations"], config["hog_pixels_per_cell"],
                                        config["hog_cells_per_block"])["hog"]

    faces = visualize.faces_per_class(split, FLAGS.faces_per_class)
    output = FLAGS.output or default_output(FLAGS.workdir, "visualize")
    for path in visualize.write_all(state, faces, output, standardize=config["standardize"], hog=hog_of(faces.images)):
        print(f"wrote {path}")
    if visualize.has_attention(state):  # before the whole split's HOG, which only an attention model needs here
        split_hog = hog_of(split.images)
        stats = visualize.attention_statistics(state, split.images, config["standardize"], split_hog)
        if offsets_px:
            stats["translation_profile"] = profile = visualize.translation_profile(
                state, split, config["standardize"], split_hog, offsets_px)
            for axis in ("x", "y"):
                accuracy = profile[axis]["accuracy"]
                print(f"theta's translation moved by {min(offsets_px):g} to {max(offsets_px):g} px along {axis}: "
                      f"{FLAGS.split} accuracy {100 * min(accuracy):.2f}-{100 * max(accuracy):.2f}%")
        path = os.path.join(output, "attention.json")
        with open(path, "w") as f:
            json.dump({"split": FLAGS.split, **stats}, f, indent=2)
        area, shift = stats["area_scale"], stats["shift_px"]["std"]
        print(f"wrote {path}: over {stats['faces']} {FLAGS.split} faces, "
              f"area scale {area['min']:.3f}-{area['max']:.3f}, shift std {shift[0]:.2f} / {shift[1]:.2f} px (x / y), "
              f"{stats['live_units']}/{stats['units']} live localisation units")
    profiles = (("tilt_degrees", visualize.tilt_profile, "theta_degrees", "turned by {:+g} degrees",
                 "theta turns them by {:+.1f} ± {:.1f} degrees", "tilt_profile.json"),
                ("zoom_factors", visualize.zoom_profile, "theta_zoom", "magnified by {:g}",
                 "theta magnifies them by {:.3f} ± {:.3f}", "zoom_profile.json"))
    for flag, profile_of, answer_key, change, answer, name in profiles:
        if not numbers[flag]:
            continue
        profile = profile_of(state, split, config["standardize"], hog_of, numbers[flag])
        for i, setting in enumerate(numbers[flag]):
            line = f"{FLAGS.split} faces {change.format(setting)}: accuracy {100 * profile['accuracy'][i]:.2f}%"
            if answer_key in profile:
                line += ", " + answer.format(profile[answer_key]["mean"][i], profile[answer_key]["std"][i])
            print(line)
        path = os.path.join(output, name)
        with open(path, "w") as f:
            json.dump({"split": FLAGS.split, **profile}, f, indent=2)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
