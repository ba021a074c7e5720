"""Showing untrusted names (ONNX node names, file content) on a terminal. Torch-free, so the CLI
can import it cheaply."""

from __future__ import annotations

import unicodedata


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
