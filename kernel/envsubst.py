"""``${{VAR}}`` / ``${{VAR:=default}}`` substitution, applied to config text before YAML parsing."""

from __future__ import annotations

import re
from collections.abc import Mapping

_PATTERN = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::=\s*(.*?)\s*)?\}\}")


class EnvSubstError(ValueError):
    """A referenced variable is unset and has no default."""


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``${{NAME}}`` / ``${{NAME:=default}}`` in ``text`` with its value.

    Raises :class:`EnvSubstError` naming the first unset variable without a default.
    """

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is not None:
            return value
        if default is not None:
            return default
        line = text.count("\n", 0, match.start()) + 1
        raise EnvSubstError(f"can't find environment variable {name} (line {line})")

    if "${{" not in text:
        return text
    return _PATTERN.sub(replace, text)
