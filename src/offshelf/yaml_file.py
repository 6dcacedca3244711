"""The one YAML file reader behind config files (``offshelf.config``) and registry overrides
(``offshelf.checkpoints``). It locates a syntax error (``file:line:column``, and where an unclosed
bracket was opened); each caller words the message in its own error type. A module of its own
because ``checkpoints`` cannot import ``config`` (config validation reaches the backends, which
reach ``checkpoints``: an import cycle)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from offshelf.extras import needs

needs(__name__, "yaml")  # offshelf[workflow]
import yaml


class YAMLSyntaxError(ValueError):
    """A file that is not valid YAML. ``line`` and ``column`` are 1-based (``None`` where PyYAML
    marks no position); ``problem`` is what went wrong, with the opening line of an unclosed
    construct where PyYAML names one; ``location`` is ``file:line:column`` (or the file)."""

    def __init__(self, path: Path, problem: str, line: int | None = None, column: int | None = None):
        self.path, self.problem, self.line, self.column = path, problem, line, column
        self.location = f"{path}:{line}:{column}" if line is not None else str(path)
        super().__init__(f"{self.location}: not valid YAML: {problem}")


def read_yaml_file(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of the file at ``path``; an unreadable file raises the ``OSError`` of the
    read (the caller names the file's role), a syntax error :class:`YAMLSyntaxError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a ValueError, not an OSError: the file was read
        raise YAMLSyntaxError(path, f"not UTF-8 text (byte {err.start}: {err.reason})") from err
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "syntax error"
        if err.context and err.problem and err.context_mark:  # e.g. where an unclosed '[' was opened
            problem += f" ({err.context} at line {err.context_mark.line + 1})"
        if mark is None:
            raise YAMLSyntaxError(path, problem) from err
        raise YAMLSyntaxError(path, problem, mark.line + 1, mark.column + 1) from err
    except yaml.YAMLError as err:
        raise YAMLSyntaxError(path, str(err)) from err
