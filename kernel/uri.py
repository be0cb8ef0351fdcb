"""nginx-compatible request-target handling: the normalized ``$uri`` used for routing."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


class BadURI(ValueError):
    """The request-target cannot be normalized (``..`` above the root, bad encoding); answer 400."""


def split_target(target: str) -> tuple[str, str]:
    """``/a/b?x=1`` → (``/a/b``, ``x=1``). An absolute-form target keeps only its path."""
    if target[:1] == "/":
        q = target.find("?")
        return (target, "") if q < 0 else (target[:q], target[q + 1 :])
    if not target.startswith("/"):
        scheme_end = target.find("://")
        if scheme_end > 0:
            path_start = target.find("/", scheme_end + 3)
            target = "/" if path_start < 0 else target[path_start:]
    path, _, query = target.partition("?")
    return path, query


def normalize_path(path: str) -> str:
    """Percent-decode, merge ``//``, resolve ``.``/``..`` like nginx's ``$uri``.

    Plain paths (no ``%``, ``//``, or dot segments) are returned unchanged without work.
    """
    if "%" not in path and "//" not in path and "/." not in path:
        return path
    if "%" in path:
        try:
            path = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
        except Exception as exc:  # pragma: no cover - unquote_to_bytes is total
            raise BadURI(str(exc)) from exc
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:-1]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise BadURI("path escapes the root")
            out.pop()
        else:
            out.append(seg)
    last = segments[-1] if len(segments) > 1 else ""
    if last == "..":
        if not out:
            raise BadURI("path escapes the root")
        out.pop()
        last = ""
    elif last == ".":
        last = ""
    result = "/" + "/".join(out)
    if out:
        result += "/" + last if last or len(segments) > 1 else ""
    else:
        result += last
    return result
