"""TLS: ssl objects compiled per version, SNI selection, HTTPS listeners, upstream TLS.

* :mod:`kernel.tls.certs` -- :func:`compile_ssl` (one ssl object -> contexts, decrypted pairs,
  certificate facts) and :class:`TlsSettings` (``apisix.ssl.*`` + keyring);
* :mod:`kernel.tls.table` -- :class:`SslTable` (``GatewayState.ssls``: exact / wildcard / ``*``
  SNI index) and :func:`certificates_report` (for the control API);
* :mod:`kernel.tls.listener` -- the HTTPS listener context (SNI callback on the live state,
  client mTLS) and :class:`TlsHttpProtocol`;
* :mod:`kernel.tls.upstream` -- :class:`UpstreamTls` (contexts toward ``https`` upstreams:
  ``tls.verify``, client certificates, ``client_cert_id``).
"""

from kernel.tls.certs import CompiledSsl, TlsSettings, compile_ssl
from kernel.tls.table import EMPTY_SSL_TABLE, SslTable, certificates_report
from kernel.tls.upstream import DEFAULT_UPSTREAM_TLS, UpstreamTls, upstream_sni

__all__ = [
    "DEFAULT_UPSTREAM_TLS",
    "EMPTY_SSL_TABLE",
    "CompiledSsl",
    "SslTable",
    "TlsSettings",
    "UpstreamTls",
    "certificates_report",
    "compile_ssl",
    "upstream_sni",
]
