"""Processes for the notification end-to-end test: a producer and a dispatcher.

    python -m tests.notify_worker produce --db D --config C --batch 1
    python -m tests.notify_worker dispatch --db D --config C [--backoff-base-s S] ...

``produce`` enqueues a fixed batch of notifications (as the evaluator would, keys built
from subject, regime and level) and prints ``{key: enqueued}`` as JSON. ``dispatch``
opens the outbox and runs the dispatcher on the channels of the config's ``[notify]``
table until SIGTERM; the test also kills it with SIGKILL in the middle of a delivery.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import FrameType

from agent.configfile import Problems
from agent.notify.config import NotifySettings, build_channels, parse_notify_config
from agent.notify.dispatcher import Dispatcher
from agent.notify.message import Notification
from agent.notify.outbox import Outbox

# (subject_type, subject, regime, kind, level) per batch; batch 2 also repeats batch 1,
# as an evaluator re-deriving everything after a restart does.
BATCHES: dict[int, list[tuple[str, str, str, str, float]]] = {
    1: [("model", m, "eu-systemic-risk", "level", level)
        for m in ("llama-70b", "mixtral-8x22b") for level in (0.5, 0.8, 0.9)],
    2: [("run", "run-17", "us-eo-14110", "level", level) for level in (0.5, 0.8, 1.0)]
       + [("model", "llama-70b", "eu-systemic-risk", "will-be-met", 1.0)],
}


def key_of(subject_type: str, subject: str, regime: str, kind: str, level: float) -> str:
    suffix = "will-be-met" if kind == "will-be-met" else f"level:{level:g}"
    return f"{subject_type}:{subject}|{regime}|{suffix}"


def batch(number: int, now_ns: int) -> list[Notification]:
    out = []
    for subject_type, subject, regime, kind, level in BATCHES[number]:
        severity = "critical" if kind == "will-be-met" or level >= 1 else (
            "warning" if level >= 0.9 else "info")
        out.append(Notification(
            key=key_of(subject_type, subject, regime, kind, level), kind=kind,
            subject_type=subject_type, subject=subject, regime=regime, level=level,
            severity=severity, created_ns=now_ns,
            payload={"regime": regime, "threshold": "1e25 FLOP", "fraction": level,
                     "flop_2sf": f"{level * 1e25:.1e}", "deadline": "2025-08-02",
                     "ledger": {"size": 42, "root": "cd" * 32}}))
    return out


def settings_from(path: Path) -> NotifySettings:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    problems = Problems(path)
    settings = parse_notify_config(raw, problems, path.parent)
    problems.raise_if_any()
    return settings


def produce(args: argparse.Namespace) -> int:
    settings = settings_from(args.config)
    numbers = [1, 2] if args.batch == 2 else [1]
    with Outbox(args.db, settings.channel_names) as outbox:
        result = {n.key: outbox.enqueue(n) for b in numbers for n in batch(b, time.time_ns())}
    print(json.dumps(result))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    settings = settings_from(args.config)
    outbox = Outbox(args.db, settings.channel_names, backoff_base_s=args.backoff_base_s,
                    backoff_cap_s=args.backoff_cap_s)
    dispatcher = Dispatcher(outbox, build_channels(settings), poll_s=settings.poll_s)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    dispatcher.start()
    print("dispatching", flush=True)
    stop.wait()
    stopped = dispatcher.stop(10)
    outbox.close()
    return 0 if stopped else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(message)s")
    parser = argparse.ArgumentParser(prog="notify_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--batch", type=int, choices=(1, 2), required=True)
    d = sub.add_parser("dispatch")
    d.add_argument("--backoff-base-s", type=float, default=2.0)
    d.add_argument("--backoff-cap-s", type=float, default=600.0)
    for x in (p, d):
        x.add_argument("--db", type=Path, required=True)
        x.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    return produce(args) if args.command == "produce" else dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
