"""A PyTorch Lightning callback that reports the run to flopledger.

    from flopledger_client.lightning import FlopledgerCallback

    trainer = Trainer(..., callbacks=[FlopledgerCallback("gpt-small-0412",
                                                         model="gpt-small")])

Every rank attaches to the run and reports the tokens of its own batches (scope
``rank``; the agent adds the ranks up); rank 0 declares the run (parameters counted
from the module, precision from the Trainer's, planned steps from ``max_steps``).
A batch's tokens: ``tokens_in_batch(batch)`` when given, else the sum of a dict
batch's ``attention_mask``, else the size of its ``input_ids``, else the size of the
batch tensor or of a tuple batch's first element.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

try:
    from lightning.pytorch import Callback  # type: ignore[import-not-found]
except ImportError:  # only the older pytorch_lightning distribution is installed
    from pytorch_lightning import Callback  # type: ignore[import-not-found]

from flopledger_client.declaration import build_declaration
from flopledger_client.run import Run

log = logging.getLogger("flopledger_client")

RUN_ID_ENV = "FLOPLEDGER_RUN_ID"
# Trainer(precision=...) as Lightning normalizes it, by its matmul precision; "32-true"
# says nothing about TF32, so it declares nothing.
_PRECISIONS = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16",
               "16-true": "fp16", "64-true": "fp64"}


def _numel(value: Any) -> int | None:
    numel = getattr(value, "numel", None)
    return int(numel()) if callable(numel) else None


def default_tokens_in_batch(batch: Any) -> int | None:
    """A batch's tokens by the usual shapes of a language-model batch; None if the
    shape is none of them."""
    if isinstance(batch, Mapping):
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        if "input_ids" in batch:
            return _numel(batch["input_ids"])
        return None
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return _numel(batch[0]) if batch else None
    return _numel(batch)


class FlopledgerCallback(Callback):  # type: ignore[misc]
    """Attaches every rank to the run, declares it from rank 0 and reports each rank's
    tokens and the optimizer steps.

    ``run_id``: else ``$FLOPLEDGER_RUN_ID``. The declaration arguments are those of
    :meth:`flopledger_client.Run.declare`; ``params``, ``precision`` and
    ``planned_steps`` default from the module and the Trainer.
    """

    def __init__(self, run_id: str | None = None, *, model: str | None = None,
                 base_models: Iterable[str] = (), category: str | None = None,
                 precision: str | None = None, recompute: str | None = None,
                 recompute_factor: float | None = None, planned_tokens: float | None = None,
                 planned_steps: float | None = None, end_time: datetime | float | None = None,
                 duration_s: float | None = None, params: float | None = None,
                 layers: float | None = None, d_model: float | None = None,
                 context: float | None = None, gpus: float | None = None,
                 tokens_in_batch: Callable[[Any], int | None] | None = None,
                 spool_dir: str | os.PathLike[str] | None = None,
                 report_every_s: float = 30.0) -> None:
        super().__init__()
        self.run_id = run_id
        self.declared: dict[str, Any] = {
            "model": model, "base_models": tuple(base_models), "category": category,
            "precision": precision, "recompute": recompute,
            "recompute_factor": recompute_factor, "planned_tokens": planned_tokens,
            "planned_steps": planned_steps, "end_time": end_time, "duration_s": duration_s,
            "params": params, "layers": layers, "d_model": d_model, "context": context,
            "gpus": gpus}
        # Fails here, before the training starts, rather than at its first step.
        build_declaration(**self.declared)
        self.tokens_in_batch = tokens_in_batch or default_tokens_in_batch
        self.spool_dir = spool_dir
        self.report_every_s = report_every_s
        self.run: Run | None = None
        self.tokens = 0
        self._warned_batch = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        run_id = self.run_id or os.environ.get(RUN_ID_ENV, "").strip()
        if not run_id:
            log.warning("flopledger: no run id (give FlopledgerCallback(run_id=...) or set "
                        "%s); this training is not reported", RUN_ID_ENV)
            return
        if self.run is not None:
            self.run.close()  # a previous fit() that ended without on_train_end
        self.tokens = 0
        self.run = Run(run_id, rank=int(trainer.global_rank), world_size=int(trainer.world_size),
                       spool_dir=self.spool_dir, report_every_s=self.report_every_s)
        declared = self._declaration(trainer, pl_module)
        if build_declaration(**declared):
            self.run.declare(**declared)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run is None:
            return
        tokens = self.tokens_in_batch(batch)
        if tokens is None:
            if not self._warned_batch:
                self._warned_batch = True
                log.warning("flopledger: cannot count the tokens of a %s batch; give "
                            "FlopledgerCallback(tokens_in_batch=...)", type(batch).__name__)
        else:
            self.tokens += int(tokens)
        self.run.report(tokens=self.tokens, steps=int(trainer.global_step), scope="rank")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            return
        self.run.report(tokens=self.tokens, steps=int(trainer.global_step), scope="rank",
                        final=True)
        self.run.close()
        self.run = None

    def _declaration(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        declared = dict(self.declared)
        if declared["params"] is None:
            declared["params"] = sum(p.numel() for p in pl_module.parameters()) or None
        if declared["precision"] is None:
            declared["precision"] = _PRECISIONS.get(str(trainer.precision))
        if declared["planned_steps"] is None and int(trainer.max_steps) > 0:
            declared["planned_steps"] = int(trainer.max_steps)
        return declared
