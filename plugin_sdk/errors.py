"""Errors a plugin may raise."""


class PluginError(Exception):
    """Base class of errors raised through the SDK."""


class SchemaError(PluginError):
    """A plugin configuration is invalid; the message is shown to the user as ``error_msg``."""


class ExprError(PluginError):
    """A ``vars`` expression does not compile (unknown operator, bad shape, bad regex)."""
