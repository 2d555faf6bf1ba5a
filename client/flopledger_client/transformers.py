"""A Hugging Face Transformers ``Trainer`` callback that reports the run to flopledger.

    from flopledger_client.transformers import FlopledgerCallback

    args = TrainingArguments(..., include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[FlopledgerCallback("llama-8b-sft-0412",
                                                    category="fine-tuning")])

Every process attaches to the run; the world process zero declares it (parameters
counted from the model, precision from ``bf16``/``fp16``/``tf32``, planned steps from
``max_steps``, the model's name from its config) and reports the Trainer's
``num_input_tokens_seen``, which Transformers gathers across ranks, as the run's
tokens. Without ``include_num_input_tokens_seen`` only steps are reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from transformers import TrainerCallback  # type: ignore[import-not-found]

from flopledger_client import validate
from flopledger_client.declaration import build_declaration
from flopledger_client.errors import InvalidValueError
from flopledger_client.run import Run

log = logging.getLogger("flopledger_client")

RUN_ID_ENV = "FLOPLEDGER_RUN_ID"


def _model_name(model: Any) -> str | None:
    config = getattr(model, "config", None)
    for attribute in ("name_or_path", "_name_or_path", "model_type"):
        value = getattr(config, attribute, None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _precision(args: Any) -> str | None:
    if getattr(args, "bf16", False):
        return "bf16"
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "tf32", None):
        return "tf32"
    return None


def _checkpoints(model: Any) -> bool:
    # Transformers 5 renamed is_gradient_checkpointing (now deprecated, with a warning).
    for attribute in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attribute):
            return bool(getattr(model, attribute))
    return False


def _counts_tokens(args: Any) -> bool:
    # Transformers turns True/False into "all"/"no" in TrainingArguments.__post_init__.
    return getattr(args, "include_num_input_tokens_seen", "no") not in ("no", False, None)


class FlopledgerCallback(TrainerCallback):  # type: ignore[misc]
    """Attaches every rank to the run, declares it from rank 0 and reports progress.

    ``run_id``: else ``$FLOPLEDGER_RUN_ID``, else ``TrainingArguments.run_name``. The
    declaration arguments are those of :meth:`flopledger_client.Run.declare`; the
    ones not given default from the model and the Trainer's arguments where those say.
    """

    def __init__(self, run_id: str | None = None, *, model: str | None = None,
                 base_models: Iterable[str] = (), category: str | None = None,
                 precision: str | None = None, recompute: str | None = None,
                 recompute_factor: float | None = None, planned_tokens: float | None = None,
                 planned_steps: float | None = None, end_time: datetime | float | None = None,
                 duration_s: float | None = None, params: float | None = None,
                 layers: float | None = None, d_model: float | None = None,
                 context: float | None = None, gpus: float | None = None,
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
        self.spool_dir = spool_dir
        self.report_every_s = report_every_s
        self.run: Run | None = None
        self._reports_tokens = False
        self._is_zero = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        run_id = self.run_id or os.environ.get(RUN_ID_ENV, "").strip() or args.run_name
        if not run_id:
            log.warning("flopledger: no run id (give FlopledgerCallback(run_id=...), set %s "
                        "or TrainingArguments(run_name=...)); this training is not reported",
                        RUN_ID_ENV)
            return
        if self.run is not None:
            self.run.close()  # a previous train() that ended without on_train_end
        self._is_zero = bool(state.is_world_process_zero)
        rank = 0 if self._is_zero else max(1, int(args.process_index))
        self.run = Run(run_id, rank=rank, world_size=int(args.world_size),
                       spool_dir=self.spool_dir, report_every_s=self.report_every_s)
        if not self._is_zero:
            return
        self._reports_tokens = _counts_tokens(args)
        if not self._reports_tokens:
            log.warning("flopledger: TrainingArguments(include_num_input_tokens_seen=...) is "
                        "off, so run %r reports steps but no tokens", run_id)
        declared = self._declaration(args, state, kwargs.get("model"))
        if build_declaration(**declared):
            self.run.declare(**declared)
        self._report(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._report(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        self._report(state, final=True)
        self.run.close()
        self.run = None

    def _report(self, state: Any, *, final: bool = False) -> None:
        if self.run is None or not self._is_zero:
            return
        tokens = int(state.num_input_tokens_seen) if self._reports_tokens else 0
        self.run.report(tokens=tokens, steps=int(state.global_step), scope="run", final=final)

    def _declaration(self, args: Any, state: Any, model: Any) -> dict[str, Any]:
        declared = dict(self.declared)
        if declared["model"] is None and model is not None:
            declared["model"] = _model_name(model)
            try:
                validate.name("model", declared["model"] or "-")
            except InvalidValueError as error:
                # A checkpoint path is no model name the agent accepts; better none.
                log.warning("flopledger: the model's config names no usable model (%s); "
                            "give FlopledgerCallback(model=...)", error)
                declared["model"] = None
        if declared["params"] is None and model is not None:
            declared["params"] = sum(p.numel() for p in model.parameters()) or None
        if declared["precision"] is None:
            declared["precision"] = _precision(args)
        if declared["recompute"] is None and (
                getattr(args, "gradient_checkpointing", False) or _checkpoints(model)):
            # Transformers' gradient checkpointing recomputes each layer's forward pass.
            declared["recompute"] = "full"
        if declared["planned_steps"] is None and int(getattr(state, "max_steps", 0)) > 0:
            declared["planned_steps"] = int(state.max_steps)
        return declared
