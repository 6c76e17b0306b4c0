"""``EventStorage`` (``trainer.storage``): the scalars of the current iteration, as detectron2's EventStorage
offers them to hooks; ``get_event_storage()`` is the one of the run in progress.

The trainer puts the losses and the learning rate of every iteration; a hook adds its own with ``put_scalar`` or
``put_scalars`` (a validation loss, a custom metric), and they are written to ``metrics.json`` and TensorBoard with
the iteration's record. ``history(name)`` keeps the recent values of each scalar.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict, deque
from collections.abc import Iterator


class HistoryBuffer:
    """The last ``max_length`` (value, iteration) pairs of one scalar."""

    def __init__(self, max_length: int = 1000):
        self.values: deque[tuple[float, int]] = deque(maxlen=max_length)

    def update(self, value: float, iteration: int) -> None:
        self.values.append((float(value), iteration))

    def latest(self) -> float:
        return self.values[-1][0]

    def avg(self, window: int) -> float:
        recent = [v for v, _ in list(self.values)[-window:]]
        return sum(recent) / len(recent)

    def median(self, window: int) -> float:
        recent = sorted(v for v, _ in list(self.values)[-window:])
        return recent[len(recent) // 2]


class EventStorage:
    def __init__(self, start_iter: int = 0):
        self.iter = start_iter
        self._history: dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._latest: dict[str, tuple[float, int]] = {}
        self._pending: dict[str, float] = {}  # put by hooks since the last write: written with this iteration

    def put_scalar(self, name: str, value, smoothing_hint: bool = True) -> None:
        value = float(value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._pending[name] = value

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no scalar named {name!r} was put in the storage")
        return self._history[name]

    def histories(self) -> dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> dict[str, tuple[float, int]]:
        """{name: (value, iteration)} of the last value of every scalar."""
        return dict(self._latest)

    def take_pending(self) -> dict[str, float]:
        """The scalars hooks put since the last call (the trainer writes them into metrics.json)."""
        pending, self._pending = self._pending, {}
        return pending


_current: list[EventStorage] = []


@contextlib.contextmanager
def storage_in_use(storage: EventStorage) -> Iterator[EventStorage]:
    """``get_event_storage()`` returns ``storage`` while the block runs (a training loop)."""
    _current.append(storage)
    try:
        yield storage
    finally:
        _current.remove(storage)


def get_event_storage() -> EventStorage:
    """The storage of the training run in progress (detectron2's accessor, for code without the trainer)."""
    if not _current:
        raise RuntimeError("get_event_storage() is only available while a DefaultTrainer trains")
    return _current[-1]
