"""TensorBoard event files without TensorFlow, through the `tensorboard` package's own writer and protos."""

from __future__ import annotations

import io
import time

import numpy as np
from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _png(image_HxWxC: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_HxWxC, np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


class SummaryWriter:
    """Scalars, images and text for one run directory; `enabled=False` (non-zero processes) writes nothing."""

    def __init__(self, logdir: str, enabled: bool = True):
        self._writer = EventFileWriter(logdir) if enabled else None

    def _add(self, value: Summary.Value, step: int) -> None:
        if self._writer is None:
            return
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=[value])))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self._add(Summary.Value(tag=tag, simple_value=float(value)), step)

    def image(self, tag: str, image_HxWxC: np.ndarray, step: int) -> None:
        """A uint8 image (HxW gray, HxWx3 RGB or HxWx4 RGBA)."""
        image = np.asarray(image_HxWxC, np.uint8)
        channels = 1 if image.ndim == 2 else image.shape[-1]
        encoded = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=channels,
                                encoded_image_string=_png(image))
        self._add(Summary.Value(tag=tag, image=encoded), step)

    def text(self, tag: str, markdown: str, step: int) -> None:
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[markdown.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        self._add(Summary.Value(tag=tag, tensor=tensor, metadata=metadata), step)

    def hparams(self, settings: dict) -> None:
        """The run's settings for TensorBoard's HParams dashboard, which lists runs side by side with their
        scalars' last values (`*/best_checkpoint_accuracy` among them). Sequences are joined by commas; None,
        which the dashboard cannot show, is left out."""
        from tensorboard.plugins.hparams import summary_v2

        shown = {k: ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
                 for k, v in settings.items() if v is not None}
        for value in summary_v2.hparams_pb(shown).value:
            self._add(value, 0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
