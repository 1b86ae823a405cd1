"""Prediction speed on this machine: end-to-end latency per photo (decode is excluded; detect +
preprocess + classify) after warm-up, and the classifier's batch throughput alone.

python scripts/bench_predict.py [--checkpoint=PATH] [--tta=none|flip|tencrop] [--reframe] [--repeats=20]
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax import checkpoint, inference, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="model to time (default: the bundled one)")
    parser.add_argument("--tta", default="none", choices=train.TTA_MODES, help="test-time augmentation")
    parser.add_argument("--reframe", action="store_true", help="average over inference.REFRAMINGS' views")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats}: must be at least 1")
    import jax
    from skimage import data as skdata

    try:
        predictor = inference.Predictor(args.checkpoint, tta=args.tta, reframe=args.reframe)
    except checkpoint.CheckpointError as e:
        parser.error(f"--checkpoint: {e}")
    photo = skdata.astronaut()  # 512x512 RGB, one face
    predictor.predict(photo)  # warm-up: compiles the classifier
    latencies = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        predictor.predict(photo)
        latencies.append(time.perf_counter() - start)
    detect = []
    gray = inference.to_gray(photo)
    for _ in range(args.repeats):
        start = time.perf_counter()
        inference.detect_faces(gray)
        detect.append(time.perf_counter() - start)

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}); model {predictor.config.model}, tta {args.tta}, "
          f"{len(predictor.framings)} framing(s) per face")
    print(f"photo 512x512, 1 face: median {1000 * statistics.median(latencies):.1f} ms end to end "
          f"(face detection {1000 * statistics.median(detect):.1f} ms)")
    faces = np.random.default_rng(0).integers(0, 256, (256, 48, 48)).astype(np.uint8)
    for batch in (1, 32, 256):
        predictor.classify(faces[:batch])
        start, rounds = time.perf_counter(), max(3, 512 // batch)
        for _ in range(rounds):
            predictor.classify(faces[:batch])
        rate = rounds * batch / (time.perf_counter() - start)
        print(f"classifier alone, batch {batch}: {rate:.0f} faces/s")


if __name__ == "__main__":
    main()
