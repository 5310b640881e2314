"""Notifiers for tests."""

from __future__ import annotations

import threading


class RecordingNotifier:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def send_message(self, message: str, level: str = "info") -> None:
        with self._lock:
            self.messages.append((level, message))

    def texts(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def count(self, needle: str) -> int:
        return sum(needle in m for m in self.texts())


class RaisingNotifier:
    def send_message(self, message: str, level: str = "info") -> None:
        raise RuntimeError("notifier is broken")


class HangingNotifier:
    def __init__(self) -> None:
        self.release = threading.Event()

    def send_message(self, message: str, level: str = "info") -> None:
        self.release.wait(60)
