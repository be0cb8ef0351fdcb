"""The ``acme-teapot`` plugin: requests with ``?brew=tea`` get a teapot's answer.

Route conf::

    "plugins": {"acme-teapot": {"status": 418, "brews": ["tea"]}}
"""

from __future__ import annotations

from typing import Any

from plugin_sdk import Context, Response, hookimpl

name = "acme-teapot"
version = "0.1.0"
priority = 50  # third-party plugins: 1-99 by convention
schema = {
    "type": "object",
    "properties": {
        "status": {"type": "integer", "minimum": 400, "maximum": 599, "default": 418},
        "brews": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                  "default": ["tea"]},
    },
    "additionalProperties": False,
}


def check_schema(conf: dict[str, Any]) -> str | None:
    """Extra checks after the JSON schema (defaults already filled)."""
    if "coffee" in conf["brews"]:
        return "a teapot cannot brew coffee"
    return None


@hookimpl
def access(ctx: Context, conf: dict[str, Any]) -> Response | None:
    """Answer ``conf["status"]`` when the client asks for one of ``conf["brews"]``."""
    brew = ctx.var["arg_brew"]
    if brew in conf["brews"]:
        return Response(conf["status"], body="I'm a teapot\n", headers={"X-Brew": brew})
    ctx.upstream.set_header("X-Teapot", "not brewing")
    return None


@hookimpl
def header_filter(ctx: Context, conf: dict[str, Any]) -> None:
    """Mark every response that went through the plugin."""
    ctx.response.headers.set("X-Teapot-Version", version)
