"""OperateGPT body templates and `response_extract` paths. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

USER_PROMPT = "{USER_PROMPT}"
MODEL_TEMPERATURE = "{MODEL_TEMPERATURE}"
MODEL_NAME = "{MODEL_NAME}"
PLACEHOLDERS = (USER_PROMPT, MODEL_TEMPERATURE, MODEL_NAME)

DEFAULT_TEMPERATURE = 0.7

ExtractPath = tuple[str | int, ...]
"""A compiled `response_extract`: dictionary keys and list indexes, in order."""

_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
_SEGMENT = re.compile(r"([^.\[\]]*)((?:\[\d*\])*)")


class ExtractError(Exception):
    """The response has no value at the path; the message says where it stopped."""


def fill(template: Any, values: Mapping[str, Any]) -> Any:
    """A fresh copy of `template` with placeholders replaced, through nested dicts and lists.

    A string that is exactly one placeholder takes the value itself, so a temperature stays a
    number; placeholders inside longer strings are replaced by the value's text. The template is
    never modified: OperateGPT mutated it and leaked one user's prompt into the next request.
    """
    if isinstance(template, str):
        exact = values.get(template, _MISSING)
        if exact is not _MISSING:
            return exact
        if "{" not in template:
            return template
        # One pass, so a prompt that itself contains "{MODEL_NAME}" is left as the user wrote it.
        return _PLACEHOLDER.sub(lambda m: _as_text(values.get(m[0], m[0])), template)
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, values) for value in template]
    return template


class UnsafeUrlValue(ValueError):
    """A value would change a URL's path however it is encoded: a whole segment of dots."""


def fill_url(template: str, values: Mapping[str, Any]) -> str:
    """Replace placeholders in a URL's path and query, percent-encoding the values.

    Every character but letters, digits and `-._~` is encoded, so a value stays inside its one
    path segment or query value: `/`, `?`, `#`, `&`, `=` and `%` included. Placeholders anywhere
    else (scheme, host, port, fragment) are left as they are: a registration cannot put them
    there (`misplaced_url_placeholder`). A value that would make a whole path segment `.` or
    `..` raises UnsafeUrlValue: clients normalise dot segments away even when percent-encoded
    (aiohttp does), so no encoding keeps them.
    """
    if "{" not in template:
        return template
    start = _path_start(template)
    rest, hash_, fragment = template[start:].partition("#")
    path, question, query = rest.partition("?")
    filled_path = _fill_quoted(path, values)
    if filled_path != path:
        _check_dot_segments(path, filled_path)
    return (
        template[:start] + filled_path + question + _fill_quoted(query, values) + hash_ + fragment
    )


def misplaced_url_placeholder(template: str) -> str | None:
    """The part of a URL template outside its path and query that holds a placeholder (the
    scheme, user info, host, port or fragment), or None."""
    start = _path_start(template)
    scheme, sep, authority = template[:start].partition("://")
    if not sep:
        # No authority: not an absolute URL, which the URL check itself refuses.
        return None
    userinfo, _, host_port = authority.rpartition("@")
    host, _, port = host_port.partition("]" if host_port.startswith("[") else ":")
    fragment = template[start:].partition("#")[2]
    parts = {
        "scheme": scheme,
        "user info": userinfo,
        "host": host,
        "port": port,
        "fragment": fragment,
    }
    return next((name for name, text in parts.items() if _PLACEHOLDER.search(text)), None)


def contains_placeholder(template: Any, placeholder: str) -> bool:
    if isinstance(template, str):
        return placeholder in template
    if isinstance(template, dict):
        return any(contains_placeholder(v, placeholder) for v in template.values())
    if isinstance(template, list):
        return any(contains_placeholder(v, placeholder) for v in template)
    return False


def parse_extract_path(path: str) -> ExtractPath:
    """Compile `a.b[].c`, `a.b[2].c` or `[].text` (`[]` means the first element).

    Raises ValueError naming the bad segment.
    """
    steps: list[str | int] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None or (not match.group(1) and not match.group(2)):
            raise ValueError(
                f"response_extract {path!r} has an invalid segment {segment!r}; "
                "use keys separated by dots, with [] or [N] for list elements, e.g. "
                "data.items[].attributes.answer"
            )
        if match.group(1):
            steps.append(match.group(1))
        for index in re.findall(r"\[(\d*)\]", match.group(2)):
            steps.append(int(index) if index else 0)
    return tuple(steps)


def extract(document: Any, path: ExtractPath, source: str) -> Any:
    """Follow a compiled path through a parsed JSON document."""
    current = document
    for depth, step in enumerate(path):
        try:
            current = current[step]
        except (KeyError, IndexError, TypeError):
            where = _render_path(path[: depth + 1])
            raise ExtractError(
                f"{source} has no value at {where!r} (response_extract {_render_path(path)!r})"
            ) from None
    return current


def as_result_text(value: Any) -> str:
    """Strings as they are; anything else as JSON text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _render_path(path: ExtractPath) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _path_start(url: str) -> int:
    """Where the path begins: after `scheme://authority` (the whole length if nothing follows
    the authority; 0 for a string without `://`)."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return 0
    after = scheme_end + 3
    ends = [i for i in (url.find(c, after) for c in "/?#") if i >= 0]
    return min(ends, default=len(url))


def _fill_quoted(text: str, values: Mapping[str, Any]) -> str:
    if "{" not in text:
        return text
    return _PLACEHOLDER.sub(
        lambda m: quote(_as_text(values[m[0]]), safe="") if m[0] in values else m[0], text
    )


def _check_dot_segments(template_path: str, filled_path: str) -> None:
    # Encoded values hold no "/", so both paths have the same segments, one for one.
    for before, after in zip(template_path.split("/"), filled_path.split("/"), strict=True):
        if after != before and after.lower().replace("%2e", ".") in (".", ".."):
            raise UnsafeUrlValue(
                f"a value would fill a whole path segment with {after!r}, which changes the path"
            )


_MISSING = object()
