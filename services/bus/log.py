"""structlog set-up: JSON lines for services, readable lines for the CLI.

Every line carries the service and host it came from.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(service: str, host: str, json_lines: bool = True, level: str = "info") -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service, host=host)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(**bound: Any) -> Any:
    return structlog.get_logger().bind(**bound)
