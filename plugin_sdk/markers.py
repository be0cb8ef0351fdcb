"""The pluggy markers that tie a plugin module's phase functions to sixgate's hook specs."""

import pluggy

PROJECT_NAME = "sixgate"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Mark a module-level function as a phase implementation (``rewrite``, ``access``, ...)."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Mark a hook specification. Used by :mod:`plugin_sdk.hooks`; plugin authors do not need it."""
