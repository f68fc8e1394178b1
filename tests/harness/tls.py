"""TLS for the topology tests: `TLSCerts` (a throwaway CA with server and client certificates, via trustme) and
`TLSRedis` (a TLS-only redis-server using them)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from types import TracebackType
from typing import Any

import trustme

from tests.harness.servers import LOOPBACK, Address, RedisServer, free_port
from tests.harness.topology import Topology, data_node_config


class TLSCerts:
    """A throwaway CA (trustme) with a server certificate for 127.0.0.1 and localhost and a client certificate, written
    as PEM files into a temp dir, plus the certificate of a second, unrelated CA (`other_ca_file`) for "does not trust"
    tests. Attributes: ca_file, server_cert, server_key, client_cert, client_key, other_ca_file (all paths)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="fmredis-topo-tls-")
        atexit.register(self.close)
        ca = trustme.CA(organization_name="fmredis tests")
        server = ca.issue_cert(LOOPBACK, "localhost")
        client = ca.issue_cert("fmredis-test-client", common_name="fmredis-test-client")
        other = trustme.CA(organization_name="unrelated CA")
        self.ca_file = self._path("ca.pem")
        self.server_cert = self._path("server.crt")
        self.server_key = self._path("server.key")
        self.client_cert = self._path("client.crt")
        self.client_key = self._path("client.key")
        self.other_ca_file = self._path("other-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        other.cert_pem.write_to_path(self.other_ca_file)
        for leaf, cert_path, key_path in (
            (server, self.server_cert, self.server_key),
            (client, self.client_cert, self.client_key),
        ):
            leaf.private_key_pem.write_to_path(key_path)
            with open(cert_path, "wb") as handle:
                for blob in leaf.cert_chain_pems:
                    handle.write(blob.bytes())

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def client_kwargs(self, *, ca_file: str | None = None, client_cert: bool = True) -> dict[str, Any]:
        """redis-py options for a TLS client trusting `ca_file` (default: our CA), presenting our client certificate
        unless client_cert=False."""
        options: dict[str, Any] = {"ssl": True, "ssl_ca_certs": ca_file or self.ca_file}
        if client_cert:
            options.update(ssl_certfile=self.client_cert, ssl_keyfile=self.client_key)
        return options

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> TLSCerts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TLSRedis(Topology):
    """A redis-server that speaks TLS only (``port 0``, ``tls-port`` free) with `certs`' server certificate and CA.

    tls_auth_clients: "yes" (a client certificate signed by the CA is required), "no", or "optional" (checked if
    presented). `password`: requirepass. Readiness is checked with a TLS client that trusts the CA and presents the
    client certificate.
    """

    def __init__(
        self,
        certs: TLSCerts,
        *,
        tls_auth_clients: str = "optional",
        password: str | None = None,
        start_timeout: float = 10.0,
        executable: str = "redis-server",
    ) -> None:
        if tls_auth_clients not in ("yes", "no", "optional"):
            raise ValueError(f"tls_auth_clients must be yes, no or optional, not {tls_auth_clients!r}")
        super().__init__()
        self.certs = certs
        self.password = password
        config = [
            *data_node_config(password),
            ("tls-cert-file", certs.server_cert),
            ("tls-key-file", certs.server_key),
            ("tls-ca-cert-file", certs.ca_file),
            ("tls-auth-clients", tls_auth_clients),
        ]
        client_kwargs: dict[str, Any] = certs.client_kwargs()
        if password is not None:
            client_kwargs["password"] = password
        self.server = RedisServer(
            "tls",
            free_port(),
            config,
            tls_only=True,
            client_kwargs=client_kwargs,
            start_timeout=start_timeout,
            executable=executable,
        )
        self._servers = [self.server]

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The TLS port (there is no plain-text port)."""
        return self.server.port

    @property
    def address(self) -> Address:
        return self.server.address

    @property
    def url(self) -> str:
        return self.server.url

    def client_kwargs(self, *, ca_file: str | None = None, client_cert: bool = True) -> dict[str, Any]:
        """redis-py options for this server (see `TLSCerts.client_kwargs`), password included if set."""
        options = self.certs.client_kwargs(ca_file=ca_file, client_cert=client_cert)
        if self.password is not None:
            options["password"] = self.password
        return options

    def _start(self) -> None:
        self.server.start()

    def flush(self) -> None:
        with self.server.client() as client:
            client.flushall()
