"""One log handler for everything: a `rich.logging.RichHandler` on the CLI's console.

The training progress bar is drawn on that console, so log records (aware's own, the libraries',
and Python warnings via `logging.captureWarnings`) are printed above the bar instead of through it.
Libraries that install their own stderr handler (transformers, datasets, huggingface_hub) are
routed through the same handler. `aware --log-level debug|info|warning|error` sets the level;
processes other than rank 0 under torchrun log errors only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from rich.console import Console
from rich.logging import RichHandler

LEVELS = ("debug", "info", "warning", "error")
HANDLER_NAME = "aware-rich"
# Libraries with their own root logger and stderr handler (propagation off): routed through ours.
LIBRARIES = ("transformers", "datasets", "huggingface_hub")


def setup_logging(level: str = "warning", console: Optional[Console] = None) -> RichHandler:
    """Install the one RichHandler on the root logger (replacing an earlier one of ours) at `level`."""
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"log level {level!r}: choose from {', '.join(LEVELS)}")
    number = getattr(logging, name.upper())
    if os.environ.get("RANK", "0") != "0":
        number = max(number, logging.ERROR)  # one voice under torchrun: the other ranks report errors only
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    handler = RichHandler(console=console or Console(stderr=True), show_path=False, markup=False,
                          rich_tracebacks=False, log_time_format="[%X]")
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(number)
    logging.getLogger("aware_cli").setLevel(number)
    # warnings.showwarning → the "py.warnings" logger → this handler (off first: logging only captures when it
    # thinks it is not capturing yet, and something may have put warnings.showwarning back since)
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    route_libraries()
    return handler


def route_libraries() -> None:
    """Send the libraries' records through the root handler instead of their own.

    transformers and huggingface_hub (always used) are imported here so that their handlers exist to
    be removed; datasets is routed when it is already imported (it is quieted where aware uses it).
    """
    import importlib

    for module in ("huggingface_hub.utils.logging", "transformers.utils.logging"):
        importlib.import_module(module)  # creates the library logger and its handler

    for name in LIBRARIES:
        if name not in sys.modules:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def clip(text: str, width: int = 60) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `width` characters with a trailing "…"."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
