"""Real disk faults: a small tmpfs, a disk filler and a read-only remount.

Mounting needs root (CI runs the suite as root); elsewhere the tests using
:func:`small_tmpfs` are skipped and say why. Every mount is unmounted when
the block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "read_only", "small_tmpfs"]

_CHUNK = 64 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def small_tmpfs(size_bytes: int) -> Iterator[Path]:
    """Mount a ``tmpfs`` of ``size_bytes`` on a fresh folder for the block.

    Skips the test (with the reason) when not root or when mount is refused.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    point = Path(tempfile.mkdtemp(prefix="hashmesh-tmpfs-"))
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(point))
    if done.returncode != 0:
        point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        if _run("umount", str(point)).returncode != 0:
            _run("umount", "-l", str(point))
        with contextlib.suppress(OSError):
            point.rmdir()


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file in ``folder`` until at most ``leave`` bytes are free.

    Returns the filler's path: delete it to free the space again.
    """
    filler = folder / "filler.bin"
    block = b"\0" * _CHUNK
    with filler.open("ab", buffering=0) as f:
        while True:
            free = shutil.disk_usage(folder).free
            if free <= leave:
                break
            try:
                f.write(block[: max(1, min(_CHUNK, free - leave))])
            except OSError:
                break
    return filler


@contextlib.contextmanager
def read_only(mount_point: Path) -> Iterator[None]:
    """Remount a :func:`small_tmpfs` read-only for the block, then read-write again."""
    done = _run("mount", "-o", "remount,ro", str(mount_point))
    if done.returncode != 0:
        pytest.skip(f"cannot remount {mount_point} read-only: {done.stderr.strip()}")
    try:
        yield
    finally:
        _run("mount", "-o", "remount,rw", str(mount_point))
