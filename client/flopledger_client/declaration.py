"""A run's declaration: what a ``declare`` message says about the run, checked."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from flopledger_client import validate
from flopledger_client.errors import InvalidValueError

# The plan's keys, as the agent reads them, by the argument that sets each.
PLAN_ARGUMENTS: dict[str, str] = {
    "planned_tokens": "tokens",
    "planned_steps": "steps",
    "end_time": "end_time",
    "duration_s": "duration_s",
    "params": "params",
    "layers": "layers",
    "d_model": "d_model",
    "context": "context",
    "gpus": "gpus",
}


def _unix_seconds(value: object) -> object:
    # A naive datetime is local time, as datetime.timestamp() reads it.
    return value.timestamp() if isinstance(value, datetime) else value


def build_declaration(*, model: str | None = None, base_models: Iterable[str] = (),
                      category: str | None = None, precision: str | None = None,
                      recompute: str | None = None, recompute_factor: float | None = None,
                      planned_tokens: float | None = None, planned_steps: float | None = None,
                      end_time: datetime | float | None = None,
                      duration_s: float | None = None, params: float | None = None,
                      layers: float | None = None, d_model: float | None = None,
                      context: float | None = None, gpus: float | None = None
                      ) -> dict[str, object]:
    """The ``declaration`` object of a declare message, with only the values given;
    :class:`InvalidValueError` names the first argument that breaks the format's rules.
    """
    out: dict[str, object] = {}
    if model is not None:
        out["model"] = validate.name("model", model)
    if isinstance(base_models, str):
        # A lone string would otherwise be read as one base model per character.
        raise InvalidValueError(
            f"base_models: expected a list of model names, got the string {base_models!r}")
    bases = [validate.name(f"base_models[{i}]", b) for i, b in enumerate(base_models)]
    if bases:
        out["base_models"] = bases
    if category is not None:
        out["category"] = validate.choice("category", category, validate.CATEGORIES)
    if precision is not None:
        out["precision"] = validate.choice("precision", precision, validate.PRECISIONS)
    if recompute is not None:
        out["recompute"] = validate.choice("recompute", recompute, validate.RECOMPUTE_MODES)
    # The agent takes the factor only with selective recomputation (none and full have
    # known factors), and needs it there: it depends on which layers are recomputed.
    if recompute_factor is not None:
        if recompute != "selective":
            raise InvalidValueError(
                f"recompute_factor: given as {recompute_factor!r}, but it is only "
                f"declared with recompute='selective' (recompute is {recompute!r})")
        out["recompute_factor"] = validate.positive(
            "recompute_factor", recompute_factor, minimum=1.0, inclusive=True)
    elif recompute == "selective":
        raise InvalidValueError(
            "recompute_factor: expected a number >= 1 (hardware FLOP per model FLOP) "
            "with recompute='selective', got None")
    given = {"planned_tokens": planned_tokens, "planned_steps": planned_steps,
             "end_time": _unix_seconds(end_time), "duration_s": duration_s,
             "params": params, "layers": layers, "d_model": d_model, "context": context,
             "gpus": gpus}
    plan = {PLAN_ARGUMENTS[argument]: validate.positive(argument, value)
            for argument, value in given.items() if value is not None}
    if plan:
        out["plan"] = plan
    return out
