"""Run and model names: which may be claimed, and how one is written where it leaves us.

A name is chosen by whoever starts a job (its environment, Slurm, torchrun, Kubernetes,
a run file, a static rule, a replayed label) and ends up in file names, log lines,
terminal tables and HTTP headers. So every name is checked where it comes in and
escaped where it goes out, by the rules here and nowhere else:

* a name is at most :data:`MAX_NAME_CHARS` characters and holds no control, format
  or line-separator character (``\\n`` forges a log line, U+202E reorders what a reader
  sees); callers strip surrounding blanks first, and a blank name is no name;
* the run id :data:`UNATTRIBUTED_RUN_ID` (in any case) is reserved for compute no run
  claims: a job that names itself so would take real unattributed compute with it into
  whatever category it declares;
* :func:`file_stem` turns a name into one safe path component (``/``, ``..`` and the
  like cannot escape the directory), :func:`printable` into one line of text, and
  :func:`header_value` into an HTTP header value.

A name that breaks a rule is refused, never repaired: a repaired name could collide
with another run's, and a run's identity is what its compute is charged to.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

UNATTRIBUTED_RUN_ID = "unattributed"
MAX_NAME_CHARS = 200
# Leaves room for a prefix, a hash and a suffix under the usual 255-byte file-name limit
# even when every character takes several bytes in UTF-8.
MAX_FILE_STEM_CHARS = 60
# Unicode categories that must not appear in a name: controls (Cc: \n, \r, ESC, DEL),
# format characters (Cf: bidirectional overrides, zero-width joiners), line and paragraph
# separators (Zl, Zp), surrogates and unassigned code points (Cs, Cn).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_SAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _forbidden(char: str) -> bool:
    return unicodedata.category(char) in _FORBIDDEN_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def name_problem(name: str) -> str | None:
    """Why ``name`` (already stripped) cannot be a run or model name; None if it can."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if name != name.strip():
        return "starts or ends with a blank"
    bad = next((c for c in name if _forbidden(c)), None)
    if bad is not None:
        return f"holds the control character {_escape(bad)}"
    return None


def is_reserved_run_id(run_id: str) -> bool:
    """Whether ``run_id`` is (or reads as) the id reserved for unclaimed compute."""
    return run_id.strip().casefold() == UNATTRIBUTED_RUN_ID


def run_id_problem(run_id: str) -> str | None:
    """Why ``run_id`` (already stripped) cannot be claimed by a run; None if it can."""
    if is_reserved_run_id(run_id):
        return "is reserved for compute no run claims"
    return name_problem(run_id)


def printable(text: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """``text`` as one line for a log or a terminal: every control, format and separator
    character as a backslash escape (``\\n``, ``\\x1b``, ``\\u202e``), cut to
    ``max_chars`` characters with ``...`` when longer."""
    if any(_forbidden(c) for c in text):
        text = "".join(_escape(c) if _forbidden(c) else c for c in text)
    if len(text) > max_chars:
        text = text[:max(0, max_chars - 3)] + "..."
    return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def file_stem(name: str) -> str:
    """A safe, stable file-name component for ``name``: letters, digits, ``.``, ``_``
    and ``-`` only, never starting with a dot or a dash, at most about
    :data:`MAX_FILE_STEM_CHARS` characters.

    A name that is already such a component comes back unchanged; any other gets a
    digest of the whole name appended, so two names that clean up alike (``a/b`` and
    ``a_b``) still get different files.
    """
    cleaned = _SAFE_FILE_CHARS.sub("_", name).lstrip(".-")
    if cleaned == name and name and len(name) <= MAX_FILE_STEM_CHARS:
        return name
    cleaned = cleaned[:MAX_FILE_STEM_CHARS].rstrip("._-") or "unnamed"
    return f"{cleaned}-{_digest(name)}"


def header_value(text: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """``text`` as an HTTP header value: printable ASCII only (RFC 9110 field values;
    a CR or LF would start a header of the sender's choosing), everything else as a
    backslash escape, cut to ``max_chars`` characters."""
    out = []
    for c in text:
        if " " <= c <= "~" and c != "\\":
            out.append(c)
        elif c == "\\":
            out.append("\\\\")
        else:
            out.append(_escape(c))
    value = "".join(out).strip()
    if len(value) > max_chars:
        value = value[:max(0, max_chars - 3)] + "..."
    return value
