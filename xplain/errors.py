"""Exit codes and the error hierarchy.

Every expected failure is an :class:`XplainError` carrying an exit code and a one-line
message that names the file and the problem; the CLI prints that line and exits, never a
traceback (``--debug`` shows one).
"""

from __future__ import annotations

import enum

from .untrusted import printable


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in docs/exit-codes.md."""

    OK = 0
    FAILURE = 1  #: an unexpected internal error (a bug: please report it)
    USAGE = 2  #: bad command line: unknown option, unknown method, bad --param
    MODEL = 3  #: the model file cannot be read, converted or verified
    PLUGIN = 4  #: a plugin failed to load or a method/metric failed while running
    INPUT = 5  #: an image, data set, label or state file cannot be used
    INTERRUPTED = 130  #: interrupted by Ctrl-C (SIGINT); nothing half-written remains


class XplainError(Exception):
    """Base of all expected errors. ``str(err)`` is the one line the user sees."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, path: object = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:  # one line: "<path>: <message> (<hint>)", no control characters
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return printable(" ".join(text.split("\n")))


class UsageError(XplainError):
    """A wrong option, parameter or call: exit 2."""

    exit_code = ExitCode.USAGE


class ModelError(XplainError):
    """A model file that cannot be read, converted or verified: exit 3."""

    exit_code = ExitCode.MODEL


class UnsupportedOpsError(ModelError):
    """The model uses ops the converter cannot handle; ``ops`` maps ``op -> count``."""

    def __init__(self, ops: dict[str, int], *, path: object = None):
        self.ops = dict(ops)
        listed = ", ".join(f"{printable(op)} x{n}" for op, n in sorted(self.ops.items()))
        super().__init__(f"unsupported ONNX ops: {listed}", path=path)


class PluginError(XplainError):
    """A plugin that failed, misbehaved or broke the contract: exit 4."""

    exit_code = ExitCode.PLUGIN


class InputDataError(XplainError):
    """An image, data set, label or box file that cannot be used: exit 5."""

    exit_code = ExitCode.INPUT
