"""The ``adet`` logger: INFO to the console on rank 0, everything to ``OUTPUT_DIR/log.txt``."""

from __future__ import annotations

import logging
import os
import sys


class _EarlyRecords(logging.Handler):
    """Keeps what is logged before OUTPUT_DIR is known (config notices), to write it into log.txt later."""

    def __init__(self, capacity: int = 1000):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.capacity = capacity

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


def setup_logger(output_dir: str | None = None, rank: int = 0, name: str = "adet", propagate: bool = False
                 ) -> logging.Logger:
    """INFO to the console on rank 0, everything to ``output_dir/log.txt`` (``log.txt.rank{r}`` on other ranks).
    Records logged since an earlier call without ``output_dir`` are written to the new log file first.
    ``propagate=False`` (a command or script that owns the process, as detectron2's) keeps the records from the root
    logger's handlers, which would print them twice; the library's own call passes True."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = propagate
    early = [r for h in logger.handlers if isinstance(h, _EarlyRecords) for r in h.records]
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        file_handler = logging.FileHandler(path)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        for record in early:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    else:
        logger.addHandler(_EarlyRecords())
    return logger
