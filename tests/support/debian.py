"""Binaries the tests start for real (etcd, redis-server), found or installed from Debian."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def installed(binary: str) -> str | None:
    """``binary`` on PATH, in /usr/bin or in /usr/local/bin, else ``None``."""
    found = shutil.which(binary)
    if found:
        return found
    for candidate in (f"/usr/bin/{binary}", f"/usr/local/bin/{binary}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_or_install(binary: str, package: str, hint: str) -> str:
    """The path of ``binary``; as root on Debian, ``apt-get install``s ``package`` when it is
    missing. Otherwise the test fails with ``hint`` (a skipped test is not a passing one)."""
    found = installed(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                       capture_output=True, timeout=600)
        found = installed(binary)
        if found:
            return found
    pytest.fail(hint, pytrace=False)
