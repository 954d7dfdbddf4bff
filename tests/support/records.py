"""Log records of the in-thread service, for tests that check what it logged."""

from __future__ import annotations

import logging

__all__ = ["Records"]


class Records(logging.Handler):
    """Every record of the service's and uvicorn's loggers while attached (the in-thread server shares them)."""

    NAMES = ("sparsecodes", "uvicorn", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        for name in self.NAMES:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]

    def messages(self, logger: str = "sparsecodes", level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.name.startswith(logger) and r.levelno >= level]
