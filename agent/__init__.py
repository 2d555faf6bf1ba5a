"""flopledger agent: samples GPUs, estimates FLOP, integrates and exports totals."""

from __future__ import annotations

__version__ = "0.1.0"
