"""FastReID's event writers with the last written iteration kept per scalar, used in place of
its TensorboardXWriter and JSONWriter: those keep one "last written iteration" for all scalars,
so a scalar put after a write at the same iteration (the evaluation metrics, put after the
epoch's last step) never reached TensorBoard or metrics.json. These write once more when closed.
They handle scalars only (the plugin puts no images or histograms)."""
import json
import os

from fastreid.utils import events

__all__ = ["TensorboardWriter", "JSONWriter"]


def _new_scalars(storage, window_size, written):
    """{iteration: {name: value}} of the scalars newer than their own last write; updates
    `written` ({name: last written iteration})."""
    out = {}
    for name, (value, iteration) in storage.latest_with_smoothing_hint(window_size).items():
        if iteration > written.get(name, -1):
            out.setdefault(iteration, {})[name] = value
            written[name] = iteration
    return out


class PerScalarWrites:
    """The shared part: scalars newer than their own last write; one more write on close
    (the evaluation after the last epoch comes after the last periodic write)."""

    def _unwritten(self):
        return _new_scalars(events.get_event_storage(), self._window_size,
                            self.__dict__.setdefault("_written", {}))

    def close(self):
        self.write()
        super().close()


class TensorboardWriter(PerScalarWrites, events.TensorboardXWriter):
    """FastReID's TensorBoard writer, with the last written iteration kept per scalar."""

    def write(self):
        for iteration, scalars in self._unwritten().items():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, iteration)


class JSONWriter(PerScalarWrites, events.JSONWriter):
    """FastReID's metrics.json writer, with the last written iteration kept per scalar."""

    def write(self):
        new = self._unwritten()
        for iteration in sorted(new):
            self._file_handle.write(json.dumps(dict(new[iteration], iteration=iteration),
                                               sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())
