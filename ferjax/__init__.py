"""ferjax: facial expression recognition on FER2013 in JAX/Flax.

`ferjax.predict(image)` gives the faces and emotions in an image array with the bundled model;
the modules hold the rest: data, preprocess, spatial, models, train, loop, runs, evaluate, kfold,
visualize, inference.
"""

__version__ = "0.1.0"


def predict(image, *, detect: bool = True) -> list[dict]:
    """Per face in `image` (HxW or HxWx3 array): box [x, y, w, h], emotion and the seven probabilities."""
    from ferjax import inference

    return inference.predict(image, detect=detect)
