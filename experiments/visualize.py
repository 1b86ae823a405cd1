"""Visualise what a trained network learned: python -m experiments.visualize --workdir=runs/stn

Writes feature maps of every conv layer, first-layer filters, the spatial transformer's input
beside its warped face (attention models) and per-class gradient saliency maps as PNGs.
"""

import os
import sys

from absl import app, flags

from experiments.flags import define_data_dir_flag, start
from ferjax import checkpoint, data, features, visualize

flags.DEFINE_string("workdir", None, "training workdir (its best checkpoint) or a checkpoint folder")
define_data_dir_flag()
flags.DEFINE_enum("split", "val", data.SPLITS, "which split the example faces come from")
flags.DEFINE_integer("faces_per_class", 2, "example faces per class", lower_bound=1)
flags.DEFINE_string("output", None, "output folder (default: <workdir>/visualize)")
FLAGS = flags.FLAGS


def main(argv):
    start(argv)
    if not FLAGS.workdir:
        print("error: pass --workdir=DIR (a training workdir or checkpoint folder)", file=sys.stderr)
        return 1
    try:
        state, meta = checkpoint.load(FLAGS.workdir)
        faces = visualize.faces_per_class(data.load(FLAGS.data_dir).split(FLAGS.split), FLAGS.faces_per_class)
    except (data.DataError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    config = meta["config"]
    hog = None
    if meta.get("hog_dim"):
        hog = features.cached_hog_pair(faces.images, config["hog_orientations"], config["hog_pixels_per_cell"],
                                       config["hog_cells_per_block"])["hog"]
    output = FLAGS.output or os.path.join(FLAGS.workdir, "visualize")
    for path in visualize.write_all(state, faces, output, standardize=config["standardize"], hog=hog):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
