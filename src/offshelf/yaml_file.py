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


#: Most values a YAML file may hold once its aliases are expanded. Every config and registry is a
#: few thousand (config.yaml: about 700); the checks that walk a config (offshelf.config) are
#: linear in this, so a file of 1 KB whose aliases nest 9 deep (9^9 values) is refused at once
#: instead of hanging them.
MAX_NODES = 100_000


def expanded_size(node: yaml.Node) -> int:
    """Values (scalars, sequences, mappings, keys) the node holds with every alias expanded,
    computed once per distinct node: linear in the file, whatever the aliases multiply to."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = 1  # a node reached again inside itself (a recursive alias) counts once
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        memo[key] = total
        return total

    return size(node)


def read_yaml_file(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of the file at ``path``; an unreadable file raises the ``OSError`` of the
    read (the caller names the file's role), a syntax error :class:`YAMLSyntaxError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a ValueError, not an OSError: the file was read
        raise YAMLSyntaxError(path, f"not UTF-8 text (byte {err.start}: {err.reason})") from err
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            size = expanded_size(node)
            if size > MAX_NODES:
                raise YAMLSyntaxError(path, f"its YAML aliases expand to {size:.3g} values, more than {MAX_NODES:,}; "
                                            f"refused before reading it (an alias bomb? write the values out)")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError as err:
        raise YAMLSyntaxError(path, "nested too deeply") from err
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
