"""TLS for connections that leave this host: on by default, pinned to the service's key.

Which connections use it (:class:`TlsPolicy`): a TCP server bound to an address
that is not loopback, and its clients, unless ``tls="insecure-plaintext"`` says
otherwise; every TCP connection with ``tls="on"`` or a user's ``ssl_context``. Unix
sockets and loopback stay plain: no other host can reach them, and the handshake
(:mod:`.transport`) already binds them to the server's address.

With no ``ssl_context``, both sides derive the server's identity from the
service's key: HKDF-SHA256 turns the key into an Ed25519 private key, and that
key signs a self-signed certificate whose every field is fixed, so the owner and
each client build the same certificate byte for byte. The client trusts only that
certificate (TLS 1.3, nothing else), so it knows it reached a holder of the key
before it sends a byte of its own, and the key file stays the whole setup. The
``cryptography`` package (pyca) builds the key and certificate: the standard
library can neither sign with Ed25519 nor write X.509. It is imported only when
TLS is used.

With an ``ssl_context`` (a module-level function ``make(server_side: bool) ->
ssl.SSLContext``, so that a server process under spawn can build its own), the
user's PKI decides who is trusted, e.g. mutual TLS with their CA. In both cases
rpcgen's HMAC handshake still runs inside TLS: the key is checked as before.

The record layer runs in memory (:class:`ssl.SSLObject` over two
:class:`ssl.MemoryBIO`), not on an ``SSLSocket``: the server's accept loop is
non-blocking, a multiplexed connection is read by one thread while another
writes, and the asyncio client reads its fd from the event loop. One lock covers
the TLS state; the socket I/O happens outside it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import pickle
import select
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .endpoint import Address, Endpoint, is_loopback
from .wire import dumps, message_bounds, recv_message, send_message

__all__ = [
    "TLS_MODES",
    "Tls",
    "TlsPolicy",
    "TlsStream",
    "derived_certificate",
]

logger = logging.getLogger("rpcgen")

#: ``tls=`` values: "auto" (on off loopback), "on" (always, TCP), "insecure-plaintext"
TLS_MODES = ("auto", "on", "insecure-plaintext")
_RECORD = 1 << 14  # the most plain text one TLS record holds
#: Bytes read from the socket at a time: under malloc's mmap threshold (a bigger
#: buffer costs an mmap and a munmap per read: 15 us here).
_RAW_READ = 1 << 16
_SEAL_CHUNK = 1 << 16
_FIRST = 1 << 20  # a large message's buffer starts here (as in wire)

ContextFactory = Callable[[bool], ssl.SSLContext]


@dataclass(frozen=True)
class TlsPolicy:
    """Whether a connection to or from ``endpoint`` uses TLS, and with which context.

    Picklable (the owner hands it to its server process), as long as
    ``ssl_context`` is a module-level function.
    """

    mode: str = "auto"
    #: ``make(server_side) -> ssl.SSLContext``: the user's own PKI
    ssl_context: ContextFactory | None = None

    def __post_init__(self) -> None:
        if self.mode not in TLS_MODES:
            raise ValueError(
                f"tls must be one of {', '.join(map(repr, TLS_MODES))}, got {self.mode!r}"
            )
        if isinstance(self.ssl_context, ssl.SSLContext):
            raise ValueError(
                "ssl_context must be a module-level function make(server_side: bool) -> "
                "ssl.SSLContext, not a context: the server process builds its own"
            )
        if self.ssl_context is not None and not callable(self.ssl_context):
            raise ValueError(f"ssl_context must be callable, got {self.ssl_context!r}")

    def applies(self, address: Address | Endpoint) -> bool:
        """Whether connections to a server listening on ``address`` use TLS."""
        endpoint = Endpoint.of(address)
        if endpoint.path is not None:
            return False
        if self.ssl_context is not None or self.mode == "on":
            return True
        if self.mode == "insecure-plaintext":
            return False
        return not is_loopback(endpoint.host)

    def plaintext_across_hosts(self, address: Address | Endpoint) -> bool:
        """Whether this policy sends plain TCP to another host (the loud opt-out)."""
        endpoint = Endpoint.of(address)
        return (
            endpoint.path is None
            and self.mode == "insecure-plaintext"
            and self.ssl_context is None
            and not is_loopback(endpoint.host)
        )

    def client_context(self, key: bytes) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return _checked(self.ssl_context(False), server_side=False)
        return _derived_contexts(key)[1]

    def server_context(self, key: bytes) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return _checked(self.ssl_context(True), server_side=True)
        return _derived_contexts(key)[0]


def _checked(context: Any, *, server_side: bool) -> ssl.SSLContext:
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl_context({server_side}) returned {context!r}, not an ssl.SSLContext")
    if (
        context.protocol
        is not (ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        and context.protocol is not ssl.PROTOCOL_TLS
    ):
        side = "PROTOCOL_TLS_SERVER" if server_side else "PROTOCOL_TLS_CLIENT"
        raise ValueError(f"ssl_context({server_side}) must return an SSLContext({side})")
    return context


# -- the identity derived from the key -------------------------------------------------------

_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


def derived_certificate(key: bytes) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of the server identity derived from ``key``.

    The same on every host for the same key; a different key gives another.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        from cryptography.x509.oid import NameOID
    except ImportError as exc:
        raise ImportError(
            "TLS (on by itself off loopback) needs the 'cryptography' package, a dependency "
            "of rpcgen: pip install cryptography"
        ) from exc

    seed = HKDF(hashes.SHA256(), 48, salt=b"rpcgen-tls-1", info=b"server identity").derive(key)
    private = Ed25519PrivateKey.from_private_bytes(seed[:32])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rpcgen service")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(int.from_bytes(seed[32:], "big") >> 1 | 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .sign(private, None)  # Ed25519: deterministic, so every side gets the same bytes
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@functools.lru_cache(maxsize=8)
def _derived_contexts(key: bytes) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, private = derived_certificate(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.num_tickets = 0  # no resumption: one less record, nothing to keep
    _load_chain(server, private + cert)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    # The one certificate trusted is the pinned one: which host name reached it is moot,
    # and a port-mapped or NATed address still reaches the right server.
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    client.load_verify_locations(cadata=cert.decode("ascii"))
    return server, client


def _load_chain(context: ssl.SSLContext, pem: bytes) -> None:
    # load_cert_chain reads only files: an anonymous memory file keeps the private key
    # off every disk and out of every directory.
    fd = os.memfd_create("rpcgen-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


# -- the record layer ------------------------------------------------------------------------


class Tls:
    """One connection's TLS state, in memory: bytes in, bytes out (thread-safe).

    Whoever calls :meth:`encrypt` must send what it returns before anyone else
    encrypts: records carry sequence numbers (every writer here writes alone).
    """

    __slots__ = ("_incoming", "_lock", "_object", "_outgoing")

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._lock = threading.Lock()

    def handshake(self, raw: bytes) -> tuple[bool, bytes, bytes]:
        """Feed what the peer sent: (finished, bytes to send it, plain text that followed).

        ``ssl.SSLError`` if the peer is not who it must be (or not TLS at all).
        """
        with self._lock:
            if raw:
                self._incoming.write(raw)
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                return False, self._outgoing.read(), b""
            return True, self._outgoing.read(), self._drain(until_asked=True)

    def alert(self) -> bytes:
        """What TLS wants to tell a peer it is refusing (an alert record), if anything."""
        with self._lock:
            return self._outgoing.read()

    def peer_certificate(self) -> bytes | None:
        return self._object.getpeercert(binary_form=True)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        with self._lock:
            self._object.write(data)
            return self._outgoing.read()

    def encrypt_all(self, pieces: Sequence[bytes | bytearray | memoryview]) -> bytes:
        if len(pieces) > 1 and sum(len(piece) for piece in pieces) <= _RECORD:
            pieces = [b"".join(pieces)]  # a small frame in one record, not one per piece
        with self._lock:
            write = self._object.write
            for piece in pieces:
                if len(piece):
                    write(piece)
            return self._outgoing.read()

    def decrypt(self, raw: bytes) -> bytes:
        """The plain text in what the peer sent (possibly none yet: a partial record).

        ``ssl.SSLError`` for a record that fails its check: a forged or altered frame.
        """
        with self._lock:
            self._incoming.write(raw)
            return self._drain()

    def decrypt_into(self, raw: bytes, view: memoryview) -> tuple[int, bytes]:
        """Like :meth:`decrypt`, straight into ``view``: (bytes put there, plain text
        past its end)."""
        with self._lock:
            self._incoming.write(raw)
            tls, incoming = self._object, self._incoming
            got = 0
            while got < len(view) and (incoming.pending or tls.pending()):
                try:
                    n = cast(int, tls.read(min(_RECORD, len(view) - got), view[got:]))
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not n:
                    break
                got += n
            return got, self._drain() if got == len(view) else b""

    def _drain(self, *, until_asked: bool = False) -> bytes:
        """All the plain text that can be decrypted now.

        Normally it stops when neither the BIO nor TLS holds unread bytes: an exception
        per message (SSLWantReadError builds its message text) would more than double the
        cost of decrypting it (5.5 us against 2.1 us here). OpenSSL reads a record from
        the BIO only as it decrypts it (read-ahead is off), so nothing is left behind.
        ``until_asked`` reads until TLS asks for more bytes: once, after the handshake.
        """
        chunks = []
        tls, incoming = self._object, self._incoming
        while until_asked or incoming.pending or tls.pending():
            try:
                chunk = tls.read(_RECORD)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class TlsStream:
    """A blocking TLS connection on ``fd``: what :mod:`.wire` reads and writes through,
    and enough of ``multiprocessing.connection.Connection`` for the rest.

    One thread reads and one writes at a time (as on any connection of ours).
    """

    __slots__ = ("_plain", "fd", "tls")

    def __init__(self, fd: int, tls: Tls) -> None:
        self.fd = fd
        self.tls = tls
        self._plain = bytearray()  # decrypted, not yet read

    @classmethod
    def connect(cls, fd: int, context: ssl.SSLContext) -> TlsStream:
        """The client's handshake on a blocking ``fd`` (bounded by its SO_RCVTIMEO)."""
        tls = Tls(context, server_side=False)
        raw = b""
        while True:
            done, out, plain = tls.handshake(raw)
            if out:
                _write_all(fd, out)
            if done:
                stream = cls(fd, tls)
                stream._plain += plain
                return stream
            raw = os.read(fd, _RAW_READ)
            if not raw:
                raise ConnectionResetError("the server closed the connection during TLS setup")

    # -- what wire uses -------------------------------------------------------------------

    def read_message(self, max_bytes: int) -> bytes | bytearray:
        """One framed message (as :func:`~.wire.recv_message`); the buffer grows only as
        bytes arrive. EOFError if the peer closes first."""
        plain = self._plain
        if not plain:  # the usual case: what arrives next is one whole message
            raw = os.read(self.fd, _RAW_READ)
            if not raw:
                raise EOFError("connection closed")
            data = self.tls.decrypt(raw)
            bounds = message_bounds(data, max_bytes)
            if bounds is not None and bounds[1] == len(data):
                return data[bounds[0] :]
            plain += data
        while True:
            bounds = message_bounds(plain, max_bytes)
            if bounds is not None:
                break
            self._more()
        start, end = bounds
        if end - start > _RECORD and len(plain) < end:
            return self._read_large(start, end - start)
        while len(plain) < end:
            self._more()
        data = bytes(plain[start:end])
        del plain[:end]
        return data

    def _more(self) -> None:
        raw = os.read(self.fd, _RAW_READ)
        if not raw:
            raise EOFError("connection closed mid-message" if self._plain else "connection closed")
        self._plain += self.tls.decrypt(raw)

    def _read_large(self, start: int, n: int) -> bytearray:
        # Decrypted straight into the message's buffer, which starts at 1 MiB and doubles
        # as bytes arrive (a peer that declares a size it never sends costs nothing).
        buffer = bytearray(min(n, _FIRST))
        got = 0
        del self._plain[:start]
        while True:
            view = memoryview(buffer)
            while got < len(buffer):
                if self._plain:  # decrypted already, past the end of the buffer so far
                    k = min(len(self._plain), len(buffer) - got)
                    view[got : got + k] = self._plain[:k]
                    del self._plain[:k]
                    got += k
                    continue
                raw = os.read(self.fd, _RAW_READ)
                if not raw:
                    raise EOFError("connection closed mid-message")
                k, rest = self.tls.decrypt_into(raw, view[got:])
                got += k
                self._plain += rest
            view.release()
            if got == n:
                return buffer
            buffer.extend(bytes(min(len(buffer), n - len(buffer))))

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at EOF (as ``os.read``)."""
        try:
            while not self._plain:
                self._more()
        except EOFError:
            return b""
        data = bytes(self._plain[:n])
        del self._plain[:n]
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) <= _SEAL_CHUNK:
            _write_all(self.fd, self.tls.encrypt(data))
            return
        # A large message a slice at a time: each sealed slice stays under malloc's mmap
        # threshold and in cache, where one sealed copy of it all would not.
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _SEAL_CHUNK):
            _write_all(self.fd, self.tls.encrypt(view[start : start + _SEAL_CHUNK]))

    def writev(self, pieces: list[bytes | memoryview]) -> None:
        if sum(len(piece) for piece in pieces) <= _SEAL_CHUNK:
            _write_all(self.fd, self.tls.encrypt_all(pieces))
            return
        for piece in pieces:
            self.write(piece)

    # -- what the proxy and the stock server's requests use --------------------------------

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def fileno(self) -> int:
        if self.fd < 0:
            raise OSError("handle is closed")
        return self.fd

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._plain:
            return True
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return bool(readable)

    def send(self, obj: Any) -> None:
        send_message(self, dumps(obj, False))

    def recv(self) -> Any:
        return pickle.loads(recv_message(self))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    sent = os.write(fd, data)
    if sent < len(data):
        view = memoryview(data)[sent:]
        while view:
            view = view[os.write(fd, view) :]
