"""Glue for workflow scripts: logging to the rule's log file, and failing with a clear message."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from xsae.errors import XsaeError


@contextlib.contextmanager
def script(snakemake: Any) -> Iterator[logging.Logger]:
    """Log to the rule's log file and stderr; turn library errors into one readable line."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_files = [p for p in snakemake.log if str(p).endswith(".log")]
    if log_files:
        handlers.append(logging.FileHandler(log_files[0], mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(f"xsae.rule.{snakemake.rule}")
    logger.info("rule %s, wildcards %s", snakemake.rule, dict(snakemake.wildcards.items()))
    try:
        yield logger
    except XsaeError as exc:
        logger.error("%s", exc)
        sys.exit(f"{snakemake.rule}: {exc}")
