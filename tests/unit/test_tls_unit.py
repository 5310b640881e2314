"""TLS pieces without processes: the derived identity, the policy, the record layer."""

from __future__ import annotations

import pickle
import ssl

import pytest

from rpcgen.runtime.tls import Tls, TlsPolicy, derived_certificate


def _pair(key: bytes, client_key: bytes | None = None) -> tuple[Tls, Tls]:
    server = Tls(TlsPolicy().server_context(key), server_side=True)
    client = Tls(TlsPolicy().client_context(client_key or key), server_side=False)
    to_server = b""
    for _ in range(4):
        done_c, out_c, _ = client.handshake(to_server)
        done_s, to_server_back, _ = server.handshake(out_c)
        to_server = b""
        if to_server_back:
            done_c, out_c, _ = client.handshake(to_server_back)
            if out_c:
                done_s, _, _ = server.handshake(out_c)
        if done_c and done_s:
            return client, server
    raise AssertionError("no handshake")


def test_the_certificate_is_the_same_from_the_same_key_and_differs_per_key() -> None:
    assert derived_certificate(b"k" * 32) == derived_certificate(b"k" * 32)
    assert derived_certificate(b"k" * 32)[0] != derived_certificate(b"j" * 32)[0]


def test_records_round_trip_and_a_tampered_one_is_refused() -> None:
    client, server = _pair(b"k" * 32)
    record = client.encrypt(b"hello")
    assert b"hello" not in record
    assert server.decrypt(record) == b"hello"
    forged = bytearray(client.encrypt(b"second"))
    forged[-1] ^= 1
    with pytest.raises(ssl.SSLError):
        server.decrypt(bytes(forged))


def test_a_client_with_another_key_refuses_the_server() -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _pair(b"k" * 32, client_key=b"j" * 32)


@pytest.mark.parametrize(
    ("policy", "address", "expected"),
    [
        (TlsPolicy(), ("127.0.0.1", 1), False),
        (TlsPolicy(), ("localhost", 1), False),
        (TlsPolicy(), ("10.1.2.3", 1), True),
        (TlsPolicy(), ("0.0.0.0", 1), True),
        (TlsPolicy(), "/run/x.sock", False),
        (TlsPolicy("on"), ("127.0.0.1", 1), True),
        (TlsPolicy("insecure-plaintext"), ("10.1.2.3", 1), False),
    ],
)
def test_when_tls_applies(policy: TlsPolicy, address: object, expected: bool) -> None:
    assert policy.applies(address) is expected  # type: ignore[arg-type]


def test_only_the_named_opt_out_sends_plain_text_across_hosts() -> None:
    assert TlsPolicy("insecure-plaintext").plaintext_across_hosts(("10.1.2.3", 1))
    assert not TlsPolicy("insecure-plaintext").plaintext_across_hosts(("127.0.0.1", 1))
    assert not TlsPolicy().plaintext_across_hosts(("10.1.2.3", 1))


def test_the_policy_pickles_and_refuses_bad_values_in_one_line() -> None:
    assert pickle.loads(pickle.dumps(TlsPolicy("on"))) == TlsPolicy("on")
    with pytest.raises(ValueError, match="tls must be one of"):
        TlsPolicy("off")
    with pytest.raises(ValueError, match="module-level function"):
        TlsPolicy(ssl_context=ssl.create_default_context())  # type: ignore[arg-type]
