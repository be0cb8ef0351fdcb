"""sixgate's kernel: config, routing, upstream selection, proxying and phase dispatch.

Private: plugins use :mod:`plugin_sdk` only.
"""

__version__ = "0.1.0"
APISIX_VERSION = "3.18.0"
"""The APISIX release whose behaviour sixgate follows (``Server: APISIX/<this>``)."""
