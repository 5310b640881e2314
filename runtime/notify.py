"""Notifiers: where health events (failures, restarts, recovery) are reported.

A notifier is anything with the seed's interface, ``send_message(message, level=...)``.
Notifications are delivered from a background thread, so a notifier that
raises or hangs never stalls health checking or restarts: a failure is logged.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.request
from typing import Protocol, runtime_checkable

__all__ = ["LoggingNotifier", "NotificationDispatcher", "Notifier", "SlackWebhookNotifier"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "success": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_EMOJI = {
    "warning": ":warning:",
    "error": ":x:",
    "critical": ":rotating_light:",
    "success": ":white_check_mark:",
}


@runtime_checkable
class Notifier(Protocol):
    def send_message(self, message: str, level: str = "info") -> None: ...


class LoggingNotifier:
    """Sends each message to a stdlib logger, at the matching level."""

    def __init__(self, logger: logging.Logger | str = "rpcgen.notify") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def send_message(self, message: str, level: str = "info") -> None:
        self.logger.log(_LEVELS.get(level, logging.INFO), "%s", message)


class SlackWebhookNotifier:
    """Posts to a Slack incoming webhook with stdlib HTTP.

    Posts ``{"text": ...}`` (plus ``username`` if given). Errors and timeouts are
    logged, never raised.
    """

    def __init__(
        self, webhook_url: str, *, timeout_s: float = 5.0, username: str | None = None
    ) -> None:
        if not webhook_url.startswith(("https://", "http://")):
            raise ValueError(f"Slack webhook URL must be http(s), got {webhook_url!r}")
        self.webhook_url = webhook_url
        self.timeout_s = timeout_s
        self.username = username
        self._log = logging.getLogger("rpcgen.notify.slack")

    def __repr__(self) -> str:
        # The webhook URL is a credential: keep it out of reprs and logs.
        return f"<SlackWebhookNotifier timeout_s={self.timeout_s}>"

    def payload(self, message: str, level: str = "info") -> dict[str, str]:
        emoji = _EMOJI.get(level)
        body: dict[str, str] = {"text": f"{emoji} {message}" if emoji else message}
        if self.username:
            body["username"] = self.username
        return body

    def send_message(self, message: str, level: str = "info") -> None:
        data = json.dumps(self.payload(message, level)).encode()
        request = urllib.request.Request(
            self.webhook_url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except Exception as exc:
            self._log.warning("Slack notification failed (%s): %s", type(exc).__name__, exc)


class NotificationDispatcher:
    """Delivers messages to notifiers from one daemon thread, in order.

    The queue is bounded: if a notifier hangs, later messages are dropped (and
    logged) instead of piling up.
    """

    def __init__(
        self, notifiers: list[Notifier], logger: logging.Logger, maxsize: int = 100
    ) -> None:
        self._notifiers = notifiers
        self._log = logger
        self._maxsize = maxsize
        self._queue: queue.Queue[tuple[str, str]] | None = None  # made on first use
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def notify(self, message: str, level: str = "info") -> None:
        if not self._notifiers:
            return
        with self._lock:
            if self._pid != os.getpid() or self._queue is None:  # first use, or forked:
                # the thread did not come along
                self._queue, self._thread, self._pid = queue.Queue(self._maxsize), None, os.getpid()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="rpcgen-notify", daemon=True
                )
                self._thread.start()
            pending = self._queue
        try:
            pending.put_nowait((message, level))
        except queue.Full:
            self._log.error("notification dropped (notifier backlog full): %s", message)

    def _run(self, pending: queue.Queue[tuple[str, str]]) -> None:
        while True:
            message, level = pending.get()
            for notifier in self._notifiers:
                try:
                    notifier.send_message(message, level=level)
                except Exception as exc:
                    self._log.error("notifier %r failed: %r", notifier, exc)
            pending.task_done()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until every queued message was handed to the notifiers."""
        pending = self._queue
        if pending is None:
            return True
        deadline = time.monotonic() + timeout_s
        done = pending.all_tasks_done
        with done:
            while pending.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True
