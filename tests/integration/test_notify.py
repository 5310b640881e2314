"""Notifiers against a real local HTTP server (Slack cannot exist here)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rpcgen.runtime import LoggingNotifier, SlackWebhookNotifier
from rpcgen.runtime.notify import NotificationDispatcher


class Webhook:
    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                hook.headers.append(dict(self.headers))
                if hook.delay_s:
                    hook.release.wait(hook.delay_s)
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXX"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


def test_slack_notifier_posts_the_expected_json(webhook: Webhook) -> None:
    SlackWebhookNotifier(webhook.url, username="rpcgen").send_message(
        "server restarted", level="warning"
    )
    SlackWebhookNotifier(webhook.url).send_message("all good")
    assert webhook.bodies == [
        {"text": ":warning: server restarted", "username": "rpcgen"},
        {"text": "all good"},
    ]
    assert webhook.headers[0]["Content-Type"] == "application/json"


def test_slack_http_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpcgen")
    with Webhook(status=500) as hook:
        SlackWebhookNotifier(hook.url).send_message("x", level="error")
    assert any("Slack notification failed (HTTPError)" in r.getMessage() for r in caplog.records)


def test_slack_timeout_is_bounded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rpcgen")
    with Webhook(delay_s=30) as hook:
        SlackWebhookNotifier(hook.url, timeout_s=0.2).send_message("slow")
    assert any("Slack notification failed" in r.getMessage() for r in caplog.records)


def test_slack_unreachable_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.waiting import free_port

    caplog.set_level(logging.WARNING, logger="rpcgen")
    SlackWebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", timeout_s=1).send_message("x")
    assert any("Slack notification failed" in r.getMessage() for r in caplog.records)


def test_slack_url_is_kept_out_of_repr() -> None:
    notifier = SlackWebhookNotifier("https://hooks.example.invalid/services/SECRET")
    assert "SECRET" not in repr(notifier)
    with pytest.raises(ValueError, match="http"):
        SlackWebhookNotifier("ftp://nope")


def test_logging_notifier_maps_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rpcgen.notify")
    LoggingNotifier().send_message("bad", level="error")
    LoggingNotifier().send_message("fine", level="success")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "bad"),
        (logging.INFO, "fine"),
    ]


def test_dispatcher_delivers_in_order_and_survives_a_raising_notifier(webhook: Webhook) -> None:
    class Boom:
        def send_message(self, message: str, level: str = "info") -> None:
            raise RuntimeError("nope")

    dispatcher = NotificationDispatcher(
        [Boom(), SlackWebhookNotifier(webhook.url)], logging.getLogger("rpcgen.test")
    )
    for i in range(5):
        dispatcher.notify(f"m{i}")
    assert dispatcher.flush(10)
    assert [b["text"] for b in webhook.bodies] == [f"m{i}" for i in range(5)]
