"""The client spool: messages that trainers, ``flopledger attest`` and ``flopledger gate``
leave for the agent, one JSON file each (the format: docs/client-spool.md).

Every user on the node may create files in the spool, so every file is hostile until it
has passed :func:`parse_message`: it is opened without following links, must be a
regular file with one link, at most :data:`MAX_MESSAGE_BYTES`, strict UTF-8 JSON with
no duplicate keys, no non-finite number and no field the format does not name. A file
that fails is renamed ``<name>.rejected`` (kept for people, never read again) and
named in one ERROR line. A file that passes stays *pending* (in memory, not read again)
until its content is committed (:meth:`SpoolReader.consumed` deletes it) or handed back
(:meth:`SpoolReader.release`).

The name rules, categories and recompute modes mirror :mod:`agent.accounting.names` and
:mod:`agent.accounting.runs`, a layer above this one; tests/accounting/test_declared.py
checks that they agree.
"""

from __future__ import annotations

import errno
import heapq
import json
import logging
import math
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPOOL_FORMAT = "flopledger-spool-1"
DEFAULT_SPOOL_DIR = Path("/run/flopledger/spool")
MAX_MESSAGE_BYTES = 65536
MAX_FILES_PER_POLL = 10000
# Beyond this many refused files in one poll, one line counts the rest: a user filling
# the spool with junk must not flood the log.
MAX_ERRORS_PER_POLL = 100
# Everyone may create files; only the owner (the agent) may list, rename or remove them.
SPOOL_DIR_MODE = 0o1733
REJECTED_SUFFIX = ".rejected"

KINDS = ("attach", "declare", "progress", "attestation", "gate")
CATEGORIES = ("pre-training", "fine-tuning", "rl", "synthetic-data-private",
              "synthetic-data-public", "evaluation", "failed-experiment", "unknown")
PRECISIONS = ("fp64", "tf32", "bf16", "fp16", "fp8", "fp4", "int8")
RECOMPUTE_MODES = ("none", "full", "selective")
DECLARATION_KEYS = ("model", "base_models", "category", "precision", "recompute",
                    "recompute_factor", "plan")
PLAN_KEYS = ("tokens", "steps", "end_time", "duration_s", "params", "layers", "d_model",
             "context", "gpus")
SCOPES = ("rank", "run")
RESULTS = ("pass", "fail", "score")
RESERVED_NAME = "unattributed"
MAX_NAME_CHARS = 200
MAX_EVIDENCE_CHARS = 2048
MAX_INT = 2**63 - 1  # what SQLite and the ledger's integer columns hold
MAX_PID_NS = 2**64 - 1  # an inode number
# Longer integer literals are refused before conversion (Python's own limit is 4300
# digits, and converting near it costs time for nothing).
_MAX_INT_DIGITS = 20

_COMMON_REQUIRED = ("format", "kind", "id", "time_ns", "pid", "host")
_COMMON_OPTIONAL = ("pid_ns", "rank", "world_size")
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "attach": (),
    "declare": ("declaration",),
    "progress": ("tokens", "steps", "scope", "final"),
    "attestation": ("model", "evaluation", "result", "score", "evidence", "by"),
    "gate": ("model", "decision"),
}
# Attestations and gate decisions are about a model, not a run.
_RUN_KINDS = ("attach", "declare", "progress")
# Refused files that could not be renamed and are remembered so as not to be re-read.
_MAX_STUCK = 100_000
_ID = re.compile(r"[0-9a-f]{32}")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class SpoolError(ValueError):
    """A message the agent refuses; the text says what is wrong, naming the field."""


@dataclass(frozen=True, slots=True)
class SpoolMessage:
    """One accepted spool message.

    Attributes:
        path: the file it was read from.
        kind: one of :data:`KINDS`.
        id: 32 lower-case hex digits, unique per message.
        time_ns: the writer's wall clock, Unix nanoseconds.
        pid: the writing process, as its own PID namespace sees it.
        pid_ns: the inode of that PID namespace, None if the writer could not tell.
        host: the writer's host name.
        run: the run id ("" for ``attestation`` and ``gate``).
        rank: the writer's rank.
        world_size: ranks in the run.
        body: the kind's own fields, validated: ``declaration`` (a dict) for
            ``declare``; ``tokens``, ``steps``, ``scope``, ``final`` for ``progress``;
            ``model``, ``evaluation``, ``result``, ``score``, ``evidence``, ``by`` for
            ``attestation``; ``model`` and ``decision`` (a dict: the decision as
            ``flopledger gate`` prints it) for ``gate``; empty for ``attach``.
        uid: the user owning the file (who wrote it), None when not read from a file.
    """

    path: Path
    kind: str
    id: str
    time_ns: int
    pid: int
    pid_ns: int | None
    host: str
    run: str
    rank: int
    world_size: int
    body: dict[str, Any] = field(hash=False)
    uid: int | None = None


# -- text ---------------------------------------------------------------------------------

def _forbidden(char: str) -> bool:
    return unicodedata.category(char) in _FORBIDDEN_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """``text`` as one line of a log: control, format and separator characters (and the
    undecodable bytes of a file name) escaped, cut to ``max_chars`` with ``...``."""
    if any(_forbidden(c) for c in text):
        text = "".join(_escape(c) if _forbidden(c) else c for c in text)
    if len(text) > max_chars:
        text = text[:max(0, max_chars - 3)] + "..."
    return text


def name_problem(name: str, *, reserved: bool = True) -> str | None:
    """Why ``name`` cannot be a run, model or evaluation name (the agent's name rules),
    None if it can. ``reserved``: whether the reserved run id is refused too."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if name != name.strip():
        return "starts or ends with a blank"
    bad = next((c for c in name if _forbidden(c)), None)
    if bad is not None:
        return f"holds the control character {_escape(bad)}"
    if reserved and name.casefold() == RESERVED_NAME:
        return "is reserved for compute no run claims"
    return None


def _value(value: object) -> str:
    return shown(repr(value), 80)


# -- parsing ------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpoolError(f"key {_value(key)} appears twice in one object")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise SpoolError(f"number {shown(text, 40)} is out of range")
    return number


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise SpoolError(f"integer {shown(text, 40)}... has more than {_MAX_INT_DIGITS} "
                         "digits")
    return int(text)


def _no_constant(text: str) -> None:
    raise SpoolError(f"{text} is not a number JSON allows")


def _strings_encodable(doc: object) -> None:
    """Refuse unpaired surrogates (``"\\ud800"``): valid JSON, but no text that can be
    written as UTF-8. Iterative: the document may be nested as deep as the parser let it."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise SpoolError(f"a string holds an unpaired surrogate "
                                 f"({_value(item[e.start:e.end])})") from None


def _decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise SpoolError(f"is {len(data)} bytes or more; at most {MAX_MESSAGE_BYTES} "
                         "are read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpoolError(f"is not UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite_float,
                         parse_int=_bounded_int, parse_constant=_no_constant)
    except SpoolError as e:
        raise SpoolError(f"is not acceptable JSON: {e}") from None
    except json.JSONDecodeError as e:
        raise SpoolError(f"is not JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise SpoolError("is nested too deeply") from None
    except ValueError as e:
        raise SpoolError(f"is not acceptable JSON: {shown(str(e), 120)}") from None
    if not isinstance(doc, dict):
        raise SpoolError(f"is a JSON {type(doc).__name__}, not an object")
    _strings_encodable(doc)
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


_BOUNDS = {MAX_INT: "2^63-1", MAX_PID_NS: "2^64-1"}


def _int(value: object, where: str, low: int, high: int = MAX_INT, why: str = "") -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise SpoolError(f"{where}: expected an integer from {low} to "
                         f"{_BOUNDS.get(high, high)}{why}, got {_value(value)}")
    return value  # type: ignore[return-value]


def _number(value: object, where: str, low: float) -> float | int:
    if not _is_number(value) or value < low:  # type: ignore[operator]
        raise SpoolError(f"{where}: expected a finite number >= {low:g}, got {_value(value)}")
    return value  # type: ignore[return-value]


def _name(value: object, where: str, *, reserved: bool = True) -> str:
    if not isinstance(value, str):
        raise SpoolError(f"{where}: expected a name (a string), got {_value(value)}")
    problem = name_problem(value, reserved=reserved)
    if problem is not None:
        raise SpoolError(f"{where}: the name {_value(value)} {problem}")
    return value


def _choice(value: object, where: str, allowed: Iterable[str]) -> str:
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        raise SpoolError(f"{where}: expected one of {', '.join(options)}; got {_value(value)}")
    return value


def _fields(doc: Mapping[str, Any], where: str, required: Iterable[str],
            optional: Iterable[str] = ()) -> None:
    """Refuse missing and unknown keys, naming them."""
    required, optional = tuple(required), tuple(optional)
    missing = [k for k in required if k not in doc]
    if missing:
        raise SpoolError(f"{where}missing field{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(doc) - set(required) - set(optional))
    if unknown:
        raise SpoolError(f"{where}unknown field{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(_value(k) for k in unknown[:5])}; expected only "
                         f"{', '.join((*required, *optional))}")


def _declaration(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpoolError(f"declaration: expected an object, got {_value(value)}")
    _fields(value, "declaration: ", (), DECLARATION_KEYS)
    if "model" in value:
        _name(value["model"], "declaration.model")
    if "base_models" in value:
        models = value["base_models"]
        if not isinstance(models, list):
            raise SpoolError("declaration.base_models: expected a list of model names, "
                             f"got {_value(models)}")
        for i, model in enumerate(models):
            _name(model, f"declaration.base_models[{i}]")
    if "category" in value:
        _choice(value["category"], "declaration.category", CATEGORIES)
    if "precision" in value:
        _choice(value["precision"], "declaration.precision", PRECISIONS)
    if "recompute" in value:
        _choice(value["recompute"], "declaration.recompute", RECOMPUTE_MODES)
    if "recompute_factor" in value:
        # A factor with another mode would be silently replaced by that mode's own.
        if value.get("recompute") != "selective":
            raise SpoolError("declaration.recompute_factor: expected only with recompute "
                             "'selective'")
        _number(value["recompute_factor"], "declaration.recompute_factor", 1)
    if "plan" in value:
        plan = value["plan"]
        if not isinstance(plan, dict):
            raise SpoolError(f"declaration.plan: expected an object, got {_value(plan)}")
        _fields(plan, "declaration.plan: ", (), PLAN_KEYS)
        for key, number in plan.items():
            _number(number, f"declaration.plan.{key}", 0)
    return value


def _attestation(doc: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: doc[k] for k in _KIND_FIELDS["attestation"]}
    _name(body["model"], "model")
    _name(body["evaluation"], "evaluation")
    result = _choice(body["result"], "result", RESULTS)
    score = body["score"]
    if result == "score" and not _is_number(score):
        raise SpoolError(f"score: expected a finite number with result 'score', got "
                         f"{_value(score)}")
    if result != "score" and score is not None:
        raise SpoolError(f"score: expected null with result {result!r}, got {_value(score)}")
    evidence = body["evidence"]
    if (not isinstance(evidence, str) or len(evidence) > MAX_EVIDENCE_CHARS
            or any(_forbidden(c) for c in evidence) or evidence != evidence.strip()
            or not (evidence.startswith("/") or _URI_SCHEME.match(evidence))):
        raise SpoolError("evidence: expected a URI with a scheme or an absolute path (at "
                         f"most {MAX_EVIDENCE_CHARS} characters, no control characters or "
                         "surrounding blanks), "
                         f"got {_value(evidence)}")
    _name(body["by"], "by", reserved=False)
    return body


def _gate(doc: Mapping[str, Any]) -> dict[str, Any]:
    model = _name(doc["model"], "model")
    decision = doc["decision"]
    if not isinstance(decision, dict):
        raise SpoolError(f"decision: expected an object, got {_value(decision)}")
    if decision.get("model", model) != model:
        raise SpoolError(f"decision.model: expected {_value(model)} (the message's model), "
                         f"got {_value(decision['model'])}")
    return {"model": model, "decision": decision}


def _body(kind: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "declare":
        return {"declaration": _declaration(doc["declaration"])}
    if kind == "progress":
        final = doc["final"]
        if not isinstance(final, bool):
            raise SpoolError(f"final: expected true or false, got {_value(final)}")
        return {"tokens": _int(doc["tokens"], "tokens", 0),
                "steps": _int(doc["steps"], "steps", 0),
                "scope": _choice(doc["scope"], "scope", SCOPES), "final": final}
    if kind == "attestation":
        return _attestation(doc)
    if kind == "gate":
        return _gate(doc)
    return {}


def parse_message(path: Path, data: bytes, uid: int | None = None) -> SpoolMessage:
    """The message in ``data`` (read from ``path``, owned by ``uid``), validated against
    the format.

    Raises:
        SpoolError: naming the first thing wrong (and the field it is in).
    """
    doc = _decode(data)
    if doc.get("format") != SPOOL_FORMAT:
        raise SpoolError(f"format: expected {SPOOL_FORMAT!r}, got "
                         f"{_value(doc.get('format')) if 'format' in doc else 'nothing'}")
    kind = _choice(doc.get("kind"), "kind", KINDS)
    run_field = ("run",) if kind in _RUN_KINDS else ()
    # ``run`` names no run in attestation and gate; an empty one is tolerated there.
    optional = (*_COMMON_OPTIONAL, *(("run",) if not run_field and doc.get("run") == ""
                                     else ()))
    _fields(doc, "", (*_COMMON_REQUIRED, *run_field, *_KIND_FIELDS[kind]), optional)
    message_id = doc["id"]
    if not isinstance(message_id, str) or not _ID.fullmatch(message_id):
        raise SpoolError(f"id: expected 32 lower-case hex digits, got {_value(message_id)}")
    pid_ns = doc.get("pid_ns")
    world_size = _int(doc.get("world_size", 1), "world_size", 1)
    return SpoolMessage(
        path=path, kind=kind, id=message_id,
        time_ns=_int(doc["time_ns"], "time_ns", 0),
        pid=_int(doc["pid"], "pid", 1),
        pid_ns=None if pid_ns is None else _int(pid_ns, "pid_ns", 0, MAX_PID_NS),
        host=_name(doc["host"], "host", reserved=False),
        run=_name(doc["run"], "run") if run_field else "",
        rank=_int(doc.get("rank", 0), "rank", 0, world_size - 1,
                  f" (below world_size {world_size})"),
        world_size=world_size,
        body=_body(kind, doc),
        uid=uid,
    )


# -- the directory ------------------------------------------------------------------------

def _file_name_problem(name: str) -> str | None:
    if any(_forbidden(c) for c in name):
        return "its name holds control characters or bytes that are not UTF-8"
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class SpoolReader:
    """Reads the spool directory; one instance per directory, used from one thread.

    Attributes:
        directory: the spool directory.
        max_files_per_poll: the most files one :meth:`poll` reads (the rest wait).
        rejected: files refused since start (a counter for a metric).
    """

    def __init__(self, directory: Path, *, max_files_per_poll: int = MAX_FILES_PER_POLL,
                 ) -> None:
        self.directory = directory
        self.max_files_per_poll = max_files_per_poll
        self.rejected = 0
        self._errors_this_poll = 0
        self._pending: dict[str, SpoolMessage] = {}
        # Refused files that could not be renamed: not read (nor logged) again.
        self._stuck: set[str] = set()
        self._warned: set[str] = set()

    @property
    def pending(self) -> int:
        """Messages handed out by :meth:`poll` and not yet consumed or released."""
        return len(self._pending)

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", text)

    def ensure(self) -> str | None:
        """Create the directory (mode 1733) if it is missing.

        Returns:
            what stops the agent from reading it, or None. An existing directory is
            left as it is; writable by everyone without the sticky bit, it is warned
            about once (any user could then remove or replace others' messages).
        """
        where = f"spool directory {shown(str(self.directory), 300)}"
        try:
            st = os.stat(self.directory)
        except FileNotFoundError:
            try:
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(self.directory, SPOOL_DIR_MODE)
                # mkdir's mode passes through the umask, which drops the write bits.
                os.chmod(self.directory, SPOOL_DIR_MODE)
            except FileExistsError:
                return self.ensure() if self.directory.is_dir() else (
                    f"{where}: exists and is not a directory")
            except OSError as e:
                return f"{where}: cannot create it ({e.strerror or e})"
            log.info("created %s with mode 1733", where)
            return None
        except OSError as e:
            return f"{where}: cannot read it ({e.strerror or e})"
        if not stat.S_ISDIR(st.st_mode):
            return f"{where}: exists and is not a directory"
        if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
            return f"{where}: the agent may not list and remove files in it"
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(st.st_mode)
            self._warn_once("mode", f"{where} is writable by everyone without the sticky bit "
                            f"(mode {mode:o}): any user may remove or replace another's "
                            "messages; chmod 1733 it")
        return None

    def poll(self) -> list[SpoolMessage]:
        """The messages of up to :attr:`max_files_per_poll` files, in name order, that
        are not pending; each becomes pending. Refused files are renamed and logged;
        files that vanish meanwhile are skipped."""
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self._warn_once("open", f"spool directory {shown(str(self.directory), 300)}: "
                            f"cannot open it ({e.strerror or e}); no messages read until "
                            "it can be")
            return []
        try:
            try:
                names = self._listing(dir_fd)
            except OSError as e:
                self._warn_once("open", f"spool directory {shown(str(self.directory), 300)}"
                                f": cannot list it ({e.strerror or e})")
                return []
            self._warned.discard("open")
            self._errors_this_poll = 0
            out = []
            for name in names:
                try:
                    message = self._read(dir_fd, name)
                except SpoolError as e:
                    self._reject(dir_fd, name, str(e))
                    continue
                if message is not None:
                    self._pending[name] = message
                    out.append(message)
            if self._errors_this_poll > MAX_ERRORS_PER_POLL:
                log.error("spool directory %s: %d more files refused in this poll and renamed "
                          "*%s, not counted", shown(str(self.directory), 300),
                          self._errors_this_poll - MAX_ERRORS_PER_POLL, REJECTED_SUFFIX)
            return out
        finally:
            os.close(dir_fd)

    def _listing(self, dir_fd: int) -> list[str]:
        """The first names in order, without holding the whole listing: a directory
        filled with millions of files costs one pass and bounded memory."""
        with os.scandir(dir_fd) as entries:
            return heapq.nsmallest(self.max_files_per_poll, (
                e.name for e in entries
                if e.name.endswith(".json") and not e.name.startswith(".")
                and e.name not in self._pending and e.name not in self._stuck))

    def _read(self, dir_fd: int, name: str) -> SpoolMessage | None:
        """The message in file ``name``; None if it vanished.

        Raises:
            SpoolError: the file is refused, and why.
        """
        problem = _file_name_problem(name)
        if problem is not None:
            raise SpoolError(problem)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SpoolError(f"cannot be examined ({e.strerror or e})") from None
        if stat.S_ISLNK(st.st_mode):
            raise SpoolError("is a symbolic link; only regular files are read")
        if not stat.S_ISREG(st.st_mode):
            raise SpoolError("is not a regular file")
        try:
            # O_NONBLOCK: a FIFO swapped in after the check must not block the open.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SpoolError("is a symbolic link; only regular files are read") from None
            raise SpoolError(f"cannot be opened ({e.strerror or e})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SpoolError("is not a regular file")
            # A hard link would let a user have the agent read (and delete) a file that
            # user could not have written into the spool.
            if st.st_nlink != 1:
                raise SpoolError(f"has {st.st_nlink} hard links; a spool file has one")
            if st.st_size > MAX_MESSAGE_BYTES:
                raise SpoolError(f"is {st.st_size} bytes; at most {MAX_MESSAGE_BYTES} are read")
            data = _read_at_most(fd, MAX_MESSAGE_BYTES + 1)
        except OSError as e:
            raise SpoolError(f"cannot be read ({e.strerror or e})") from None
        finally:
            os.close(fd)
        return parse_message(self.directory / name, data, st.st_uid)

    def _reject(self, dir_fd: int, name: str, why: str) -> None:
        target = name + REJECTED_SUFFIX
        path = shown(str(self.directory / name), 300)
        try:
            os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as e:
            self.rejected += 1
            if len(self._stuck) < _MAX_STUCK:
                self._stuck.add(name)
            if not self._error_allowed():
                return
            log.error("spool file %s: %s; could not rename it %s (%s): left in place, not "
                      "read again, not counted", path, why, shown(target), e.strerror or e)
            return
        self.rejected += 1
        if self._error_allowed():
            log.error("spool file %s: %s; renamed %s, not counted", path, why, shown(target))

    def _error_allowed(self) -> bool:
        self._errors_this_poll += 1
        return self._errors_this_poll <= MAX_ERRORS_PER_POLL

    def consumed(self, messages: Iterable[SpoolMessage]) -> None:
        """Delete the files of messages whose content is committed, and forget them. A
        file that cannot be deleted stays pending, so it is never counted twice."""
        for message in messages:
            try:
                os.unlink(message.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self._warn_once(f"unlink:{message.path.name}",
                                f"spool file {shown(str(message.path), 300)}: cannot delete "
                                f"it ({e.strerror or e}); not read again while the agent runs")
                continue
            self._pending.pop(message.path.name, None)

    def refuse(self, message: SpoolMessage, why: str) -> None:
        """Refuse a message that parsed but may not be accepted (its writer may not speak
        for the run it names): renamed ``.rejected`` with one ERROR line, as a bad file."""
        self._pending.pop(message.path.name, None)
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            self._errors_this_poll = 0
            self._reject(dir_fd, message.path.name, why)
        finally:
            os.close(dir_fd)

    def release(self, messages: Iterable[SpoolMessage]) -> None:
        """Forget messages without deleting their files: the next :meth:`poll` reads
        them again."""
        for message in messages:
            self._pending.pop(message.path.name, None)


__all__ = [
    "DEFAULT_SPOOL_DIR",
    "KINDS",
    "MAX_MESSAGE_BYTES",
    "SPOOL_FORMAT",
    "SpoolError",
    "SpoolMessage",
    "SpoolReader",
    "parse_message",
]
