"""Helpers for untrusted input: what may be shown, opened, parsed and written.

Everything a model file, sidecar, image, manifest, box or label file, fitted state or plugin
gives us is untrusted. These small functions are the single place each rule lives:

* :func:`printable` — the one escaping function for every untrusted string shown on a terminal
  (or written into a one-line message): C0 controls (ESC, BEL, CR, LF, TAB …), DEL, C1 controls
  (U+0080–U+009F, e.g. the 8-bit CSI U+009B), bidirectional overrides and lone surrogates (from
  undecodable file names) become visible ``\\x1b`` / ``\\u202e`` escapes, so no CSI, OSC (OSC 52
  writes the clipboard) or cursor movement ever reaches the terminal.
* :func:`display_name` — an untrusted *name* (an ONNX node name) quoted for a terminal, cut when
  long, printable non-ASCII letters kept.
* :func:`path_text` — a file name as text that can always be encoded (non-UTF-8 bytes escaped).
* :func:`safe_stem` — a file-name component for outputs (no separators, no controls).
* :func:`require_regular_file` — FIFOs, devices (``/dev/zero``) and sockets are refused *before*
  opening: opening a FIFO blocks forever, reading a device never ends.
* :func:`parse_json` — ``json.loads`` that turns deep nesting (RecursionError), integers beyond
  Python's 4300-digit limit (ValueError) and NaN/Infinity literals into one-line errors.
* :func:`confined_file` — a relative location resolved inside a folder (no absolute path, no
  ``..``, no symbolic link on the way), as external data and sidecar labels must be.
* :func:`check_path_length` — a path longer than the system allows (``PATH_MAX``, 4096 bytes on
  Linux) or with a component above ``NAME_MAX`` (255 bytes) is one line, shown shortened,
  before ``stat`` or ``mkdir`` fail with ``ENAMETOOLONG`` somewhere inside.
"""

from __future__ import annotations

import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "printable",
    "path_text",
    "safe_stem",
    "require_regular_file",
    "parse_json",
    "confined_file",
    "check_path_length",
]

# C0 (0x00-0x1f), DEL, C1 (0x80-0x9f), bidi embeddings/overrides/isolates, line/paragraph
# separators, BOM/zero-width no-break and lone surrogates (from surrogateescape'd file names).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)
_UNSAFE_BUT_LINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every control or invisible-direction character shown as an escape.

    The result holds no character a terminal interprets: CSI (``ESC [`` and the 8-bit
    U+009B), OSC (``ESC ]`` … BEL, incl. OSC 52), lone ESC, BEL, CR/LF and C1 controls are
    all rendered as ``\\x..`` text. Printable Unicode (accents, CJK, emoji) is kept.
    ``keep_newlines`` keeps LF and TAB (multi-line text such as a plugin's description)."""
    return (_UNSAFE_BUT_LINES if keep_newlines else _UNSAFE).sub(_escape, str(text))


def display_name(text: str, limit: int = 80) -> str:
    """``text`` quoted for a terminal: control and other non-printable characters escaped, long
    names cut. ONNX names are untrusted file content (an escape sequence must not reach the
    terminal); printable non-ASCII letters are kept."""
    out = []
    for char in text:
        if char == "'" or char == "\\":
            out.append("\\" + char)
        elif unicodedata.category(char)[0] in ("C", "Z") and char != " ":
            code = ord(char)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
            )
        else:
            out.append(char)
    shown = "".join(out)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return f"'{shown}'"


def path_text(path: object) -> str:
    """A path as a ``str`` that encodes to UTF-8: undecodable bytes (kept by Python as lone
    surrogates) are shown as ``\\xNN`` escapes instead of making every later write fail."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")


def safe_stem(stem: str) -> str:
    """A file-name component built from an untrusted name: separators, controls and
    undecodable bytes become ``_`` (so outputs never leave their folder or carry escapes)."""
    text = path_text(stem)
    text = re.sub(r"[\x00-\x1f\x7f-\x9f/\\\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]", "_", text)
    if text in ("", ".", "..") or text.startswith("."):
        text = "_" + text
    return text


def require_regular_file(
    path: str | os.PathLike, error: Callable[..., Exception], what: str = "file"
) -> int:
    """Stat ``path`` (following links) and return its size; refuse anything but a regular file
    *before* it is opened. ``error(message, path=...)`` builds the exception to raise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise error(f"{what} is a dangling symbolic link", path=path) from None
        raise error(f"{what} not found", path=path) from None
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        raise error(
            f"cannot access the {what}: {getattr(e, 'strerror', None) or e}", path=path
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} is a directory, not a file", path=path)
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "special"
        )
        raise error(f"{what} is not a regular file ({kind}); refused", path=path)
    return st.st_size


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(
    text: str | bytes, path: object, error: Callable[..., Exception], what: str = "JSON"
) -> Any:
    """``json.loads`` for untrusted text: every failure is ``error(one line, path=path)``.

    Refused: invalid JSON, nesting deeper than Python's recursion limit (the C parser checks it
    and raises RecursionError, so a 100,000-deep file costs nothing), integers with more digits
    than Python converts (4300), and NaN/Infinity (not JSON)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8 text", path=path) from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise error(f"invalid {what}: {e.msg} at line {e.lineno}", path=path) from None
    except RecursionError:
        raise error(f"{what} is nested too deeply; refused", path=path) from None
    except ValueError as e:  # huge integers, NaN/Infinity
        first = str(e).split(";")[0].split("\n")[0]
        raise error(f"invalid {what}: {first}", path=path) from None


def confined_file(
    folder: Path, location: str, error: Callable[..., Exception], what: str, path: object
) -> Path:
    """``folder / location`` for a plain relative ``location`` that stays inside ``folder``.

    Refused (``error(message, path=path)``): empty, absolute, ``..``, backslashes, drive
    letters, NUL, a symbolic link at any step, a target that is not a regular file."""
    folder = Path(folder).resolve()
    bad = f"{what} {printable(repr(location))} is not allowed"
    if not location or "\x00" in location or "\\" in location or ":" in location:
        raise error(f"{bad} (must be a plain relative path)", path=path)
    rel = Path(location)
    if (
        rel.is_absolute()
        or location.startswith("/")
        or any(part in ("..", "") for part in rel.parts)
    ):
        raise error(f"{bad} (absolute paths and '..' are refused)", path=path)
    candidate = folder
    for part in rel.parts:
        if part == ".":
            continue
        candidate = candidate / part
        if candidate.is_symlink():
            raise error(f"{bad} (symbolic links are refused)", path=path)
    if not candidate.exists():
        raise error(f"{what} {printable(repr(location))} not found beside the file", path=path)
    if os.path.commonpath([candidate.resolve(), folder]) != str(folder):
        raise error(f"{bad} (it leaves the folder)", path=path)

    def named(message: str, path: object = None, _where: object = path) -> Exception:
        return error(message, path=_where)

    require_regular_file(candidate, named, what)
    return candidate


def _limit(name: str, default: int) -> int:
    try:
        return int(os.pathconf("/", name))
    except (OSError, ValueError, AttributeError):  # Windows, exotic file systems
        return default


def shorten(text: str, keep: int = 60) -> str:
    """A long untrusted string for a one-line message: its start, an ellipsis, its length."""
    text = printable(path_text(text))
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"


def check_path_length(path: str | os.PathLike, error: Callable[..., Exception], what: str) -> None:
    """Refuse ``path`` when it, or one of its components, is longer than the file system takes."""
    raw = os.fsencode(path)
    path_max, name_max = _limit("PC_PATH_MAX", 4096), _limit("PC_NAME_MAX", 255)
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if len(raw) >= path_max:
        raise error(
            f"{what} is {len(raw)} bytes long, more than the system's limit of {path_max - 1}",
            path=shorten(os.fsdecode(raw)),
        )
    if longest > name_max:
        raise error(
            f"{what} has a name of {longest} bytes, more than the file system's limit of "
            f"{name_max}",
            path=shorten(os.fsdecode(raw)),
        )
