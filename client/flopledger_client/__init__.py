"""flopledger-client: a training job tells the flopledger agent on its node which run
its GPU work belongs to, what it trains and plans, and how many tokens it processed.

Standard library only. Messages go as small JSON files into the agent's spool
directory (docs/client-spool.md); the adapters for Transformers
(:mod:`flopledger_client.transformers`) and Lightning (:mod:`flopledger_client.lightning`)
import those libraries only when imported themselves.

    from flopledger_client import Run

    with Run("llama-8b-sft-0412") as run:
        run.declare(model="llama-8b-sft", category="fine-tuning", precision="bf16",
                    params=8.0e9, planned_tokens=2.0e10)
        for step, batch in enumerate(loader, 1):
            ...
            run.report(tokens=tokens_so_far, steps=step)
"""

from __future__ import annotations

from flopledger_client.declaration import build_declaration
from flopledger_client.errors import InvalidValueError, MessageTooLargeError
from flopledger_client.run import Run
from flopledger_client.spool import (
    DEFAULT_SPOOL_DIR,
    MAX_MESSAGE_BYTES,
    SPOOL_DIR_ENV,
    SPOOL_FORMAT,
    SpoolWriter,
    make_message,
)
from flopledger_client.validate import CATEGORIES, PRECISIONS, RECOMPUTE_MODES

__version__ = "0.1.0"

__all__ = [
    "CATEGORIES",
    "DEFAULT_SPOOL_DIR",
    "MAX_MESSAGE_BYTES",
    "PRECISIONS",
    "RECOMPUTE_MODES",
    "SPOOL_DIR_ENV",
    "SPOOL_FORMAT",
    "InvalidValueError",
    "MessageTooLargeError",
    "Run",
    "SpoolWriter",
    "build_declaration",
    "make_message",
]
