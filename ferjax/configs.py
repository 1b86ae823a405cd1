"""Training configuration: one frozen dataclass, one comment per field.

`Config` is what `experiments.train` flags set, what checkpoints store (as JSON) and what
`create_train_state` / `train_step` read. `get_config(model)` gives the defaults for a model.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp

from ferjax import data, models
from ferjax.models.stn import TRANSFORMS as STN_TRANSFORMS
from ferjax.models.stn import WARP_POSITIONS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
CLASS_WEIGHTINGS = ("none", "balanced")
DTYPES = ("float32", "bfloat16")
INT_TUPLE = "tuple[int, ...]"  # base_type of the fields that take several integers (--widths, --hidden)
STR_TUPLE = "tuple[str, ...]"  # base_type of the fields that take several strings (--distill_from)


class ConfigError(ValueError):
    """A bad configuration value; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Config:
    # Model.
    model: str = "stn"  # a name from ferjax.models
    dropout: float | None = None  # dropout rate; None keeps the model's default
    warp_at: str = "input"  # stn only: warp the 'input' image or the last conv 'features'
    stn_transform: str = "affine"  # stn, stn_deep: the warp is any 'affine' map or a 'similarity' (turn, zoom, shift)
    widths: tuple[int, ...] | None = None  # CNN families: channels per stage; None keeps the default
    convs_per_stage: int | None = None  # CNN families: conv blocks per stage; None keeps the default
    hidden: tuple[int, ...] | None = None  # CNN families: widths of the hidden dense layers; None keeps the default
    ceil_pool: bool = False  # CNN families: pooling keeps an odd map's last row and column instead of dropping them
    dtype: str = "float32"  # computation dtype: float32, or bfloat16 on accelerators (parameters stay float32)
    # Input pipeline.
    standardize: bool = False  # per-image standardisation after training-mean subtraction
    flip: bool = True  # random horizontal flip (the paper's augmentation)
    shift: int = 0  # random shift by up to this many pixels
    subpixel_shift: bool = False  # shift by any fraction of a pixel, not whole pixels only (needs --shift)
    rotate: float = 0.0  # random rotation by up to this many degrees
    scale: float = 0.0  # random zoom in [1 - scale, 1 + scale]
    erase: float = 0.0  # random-erasing probability
    mixup: float = 0.0  # mixup's Beta(a, a) concentration a: each face blended with another, labels alike (0: off)
    crop: int = 0  # train on random crop x crop windows, predict on the centre one (or ten); 0: the whole face
    hog_orientations: int = 9  # HOG model: orientation bins
    hog_pixels_per_cell: int = 8  # HOG model: cell size in pixels
    hog_cells_per_block: int = 2  # HOG model: block size in cells
    limit_train: int | None = None  # use a stratified subset of this many training faces
    limit_eval: int | None = None  # use stratified subsets of this many val / test faces
    # Optimisation.
    epochs: int = 30  # passes over the training split
    batch_size: int = 64  # training batch size
    eval_batch_size: int = 500  # evaluation batch size
    optimizer: str = "adam"  # adam, adamw or sgd (Nesterov momentum)
    learning_rate: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # sgd momentum
    schedule: str = "constant"  # constant, cosine (with warm-up), onecycle or plateau
    warmup_epochs: float = 0.0  # linear warm-up for the cosine schedule
    plateau_patience: int = 3  # plateau: epochs without improvement of the training loss before decay
    plateau_factor: float = 0.5  # plateau: learning-rate decay factor
    l2: float = 1e-4  # coefficient of the L2 term 0.5 * sum(w^2) over conv / dense kernels (the paper's loss)
    weight_decay: float = 0.0  # decoupled weight decay on kernels (adamw, sgd)
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy targets
    class_weighting: str = "none"  # 'balanced' weights each class by N / (7 * count) in the loss
    grad_clip: float = 0.0  # clip gradients to this global norm (0: off)
    # Sharpness-aware minimisation: each step's gradient is taken this far uphill from the weights, in
    # parameter space (0: off; on, every step costs two passes).
    sam_rho: float = 0.0
    ema: float = 0.0  # decay of the weights' moving average, which evaluation and saved models use (0: off; e.g. 0.999)
    seed: int = 0  # root PRNG seed: init, shuffling, dropout and augmentation all derive from it
    init_from: str | None = None  # start from this model's weights (workdir or exported); parts it lacks start fresh
    # Fine-tune only these top-level parts of the model, e.g. stn_loc; the others keep their weights and
    # batch-norm statistics.
    train_only: tuple[str, ...] | None = None
    # Knowledge distillation.
    distill_from: tuple[str, ...] | None = None  # teachers (workdirs, exported models) to learn from beside the labels
    distill_weight: float = 0.5  # weight of the teachers' term in the loss; the labels' cross-entropy keeps 1 - weight
    distill_temperature: float = 2.0  # softmax temperature of teachers and student in the teachers' term
    distill_flip: bool = False  # the teachers' targets average each view and its mirror image (flip TTA)
    # Attention.
    align_weight: float = 0.0  # weight of a loss pulling theta's rotation and zoom to undo the augmentation's

    def model_kwargs(self) -> dict:
        """Fields of the model constructor that this config overrides."""
        kwargs = {}
        if self.dropout is not None:
            kwargs["dropout"] = self.dropout
        if self.model == "stn":
            kwargs["warp_at"] = self.warp_at
        if self.stn_transform != "affine":
            kwargs["stn_transform"] = self.stn_transform
        if self.widths is not None:
            kwargs["widths"] = tuple(self.widths)
        if self.convs_per_stage is not None:
            kwargs["convs_per_stage"] = self.convs_per_stage
        if self.hidden is not None:
            kwargs["hidden"] = tuple(self.hidden)
        if self.ceil_pool:
            kwargs["ceil_pool"] = True
        if self.dtype != "float32":
            kwargs["dtype"] = jnp.dtype(self.dtype)
        return kwargs

    def validate(self) -> Config:
        """Checks every field; returns self.

        Raises:
          ConfigError: naming the first bad flag.
        """
        def check(ok, flag, why):
            if not ok:
                raise ConfigError(f"--{flag}={getattr(self, flag)!r}: {why}")

        check(self.model in models.MODELS, "model", f"unknown model; choose one of {', '.join(models.names())}")
        check(self.dropout is None or 0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        check(self.warp_at in WARP_POSITIONS, "warp_at", "must be 'input' or 'features'")
        check(self.stn_transform in STN_TRANSFORMS, "stn_transform", f"choose one of {', '.join(STN_TRANSFORMS)}")
        check(self.stn_transform == "affine" or models.has_attention(models.create(self.model)), "stn_transform",
              "needs a model with a spatial transformer (stn, stn_deep)")
        check(self.dtype in DTYPES, "dtype", f"choose one of {', '.join(DTYPES)}")
        check(self.widths is None or (len(self.widths) > 0 and min(self.widths) > 0), "widths", "must be positive")
        check(self.convs_per_stage is None or self.convs_per_stage > 0, "convs_per_stage", "must be positive")
        check(self.hidden is None or min(self.hidden, default=1) > 0, "hidden", "must be positive")
        check(self.shift >= 0, "shift", "must be >= 0")
        check(not self.subpixel_shift or self.shift > 0, "subpixel_shift", "needs --shift of at least 1")
        check(0 <= self.rotate <= 180, "rotate", "must be in [0, 180]")
        check(0 <= self.scale < 1, "scale", "must be in [0, 1)")
        check(0 <= self.erase <= 1, "erase", "must be a probability")
        check(self.mixup >= 0, "mixup", "must be >= 0 (0: off)")
        check(self.crop == 0 or 16 <= self.crop < data.IMAGE_SIZE, "crop",
              f"must be 0 (the whole face) or in [16, {data.IMAGE_SIZE})")
        for flag in ("hog_orientations", "hog_pixels_per_cell", "hog_cells_per_block", "epochs", "batch_size",
                     "eval_batch_size"):
            check(getattr(self, flag) > 0, flag, "must be positive")
        for flag in ("limit_train", "limit_eval"):
            check(getattr(self, flag) is None or getattr(self, flag) > 0, flag, "must be positive")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        check(self.learning_rate > 0, "learning_rate", "must be positive")
        check(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        check(self.schedule in SCHEDULES, "schedule", f"choose one of {', '.join(SCHEDULES)}")
        check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "must be in [0, epochs)")
        check(self.plateau_patience > 0, "plateau_patience", "must be positive")
        check(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        for flag in ("l2", "weight_decay", "grad_clip"):
            check(getattr(self, flag) >= 0, flag, "must be >= 0")
        check(self.sam_rho >= 0, "sam_rho", "must be >= 0 (0: off)")
        check(0 <= self.ema < 1, "ema", "must be in [0, 1)")
        check(self.init_from != "", "init_from", "name a workdir or an exported model")
        check(self.train_only is None or len(self.train_only) > 0, "train_only", "name at least one part of the model")
        check(self.distill_from is None or len(self.distill_from) > 0, "distill_from", "name at least one teacher")
        check(0 <= self.distill_weight <= 1, "distill_weight", "must be in [0, 1]")
        check(self.distill_temperature > 0, "distill_temperature", "must be positive")
        check(not self.distill_flip or self.distill_from, "distill_flip", "needs teachers (--distill_from)")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        check(self.class_weighting in CLASS_WEIGHTINGS, "class_weighting",
              f"choose one of {', '.join(CLASS_WEIGHTINGS)}")
        try:
            model = models.create(self.model, **self.model_kwargs())
        except ValueError as e:
            raise ConfigError(f"--model={self.model}: {e}") from None
        check(self.align_weight >= 0, "align_weight", "must be >= 0")
        check(not self.align_weight or models.has_attention(model), "align_weight",
              "needs a model with a spatial transformer (stn, stn_deep)")
        check(not self.align_weight or self.rotate or self.scale, "align_weight",
              "needs --rotate or --scale: their turns and zooms are what the transformer learns to undo")
        check(not self.mixup or not model.needs_hog, "mixup",
              "not for the HOG model: its HOG vectors are computed ahead of training, from the faces unblended")
        check(not self.mixup or not self.align_weight, "mixup",
              "not with --align_weight: a blend of two faces has no one augmentation to undo")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, fields: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        # JSON has lists where the config has tuples.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def base_type(field: dataclasses.Field) -> str:
    """A field's type name without ' | None' (annotations are strings here: postponed evaluation)."""
    return str(field.type).removesuffix(" | None")


def get_config(model: str = "stn", **overrides) -> Config:
    """The default config (the paper's recipe: Adam, cross-entropy + L2, flip) for `model`, validated."""
    return Config(**{"model": model, **overrides}).validate()


def tiny_config(**overrides) -> Config:
    """A config small enough for unit tests."""
    fields = {"model": "_tiny_cnn", "epochs": 1, "batch_size": 16, "eval_batch_size": 32}
    return Config(**{**fields, **overrides}).validate()
