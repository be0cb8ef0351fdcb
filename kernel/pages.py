"""Status reason phrases and nginx's built-in error pages (spec §5.9)."""

from __future__ import annotations

from http import HTTPStatus

_NGINX_TITLES = {
    301: "301 Moved Permanently",
    302: "302 Found",
    401: "401 Authorization Required",
    404: "404 Not Found",
    413: "413 Request Entity Too Large",
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS.update({503: b"Service Temporarily Unavailable", 504: b"Gateway Time-out"})


def reason(status: int) -> bytes:
    """The reason phrase for a status line (``b""`` when unknown)."""
    return _REASONS.get(status, b"")


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``, cached per status and version."""
    key = (status, version)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/" + version + b" " + str(status).encode() + b" " + reason(status) + b"\r\n"
        _STATUS_LINES[key] = line
    return line


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_PAGES: dict[int, bytes] = {}


def error_page(status: int) -> bytes:
    """nginx's HTML page for a body-less exit with ``status`` (empty below 300)."""
    page = _PAGES.get(status)
    if page is None:
        if status < 300:
            page = b""
        else:
            title = _NGINX_TITLES.get(status) or f"{status} {reason(status).decode()}".strip()
            page = (
                f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n<hr><center>openresty</center>\r\n"
                "</body>\r\n</html>\r\n"
            ).encode()
        _PAGES[status] = page
    return page
