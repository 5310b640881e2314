"""Another local user, for tests of what a second user on the same host can see or do.

Made with ``useradd`` (a system user without a home) and removed in ``finally``; needs
root. Tests skip, with a message saying so, where that is not possible.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from rpcgen.runtime.poll import retry

_NAMES = itertools.count()


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int


def skip_unless_root() -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to make a second local user (CI runs as root)")


@contextmanager
def other_user() -> Iterator[OtherUser]:
    skip_unless_root()
    name = f"rpcgt{os.getpid() % 100000}x{next(_NAMES)}"
    # useradd takes a lock on /etc/passwd: a test on another xdist worker may hold it.
    made = retry(
        lambda _: subprocess.run(
            ["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            timeout=30,
        ),
        retry_on=subprocess.CalledProcessError,
        timeout_s=30,
        initial=0.05,
        maximum=0.5,
    )
    assert made.returncode == 0
    try:
        entry = pwd.getpwnam(name)
        yield OtherUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            retry(
                lambda _: subprocess.run(
                    ["userdel", name], check=True, capture_output=True, timeout=30
                ),
                retry_on=subprocess.CalledProcessError,
                timeout_s=30,
                initial=0.05,
                maximum=0.5,
            )
