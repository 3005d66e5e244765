"""Scratch directories for the benchmarks (imported by the scripts beside it).

File creation on this machine's root filesystem (ext4 without a journal) costs ~0.8 ms
and an fsync ~1.1 ms, so spool and state go on a loop-mounted journaled ext4 image when
the benchmark runs as root; the second value says which filesystem was used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def workdir() -> Iterator[tuple[Path, str]]:
    """A scratch directory, on a loop-mounted journaled ext4 image when possible."""
    base = Path(tempfile.mkdtemp(prefix="mailsync-bench-"))
    img, mnt = base / "fs.img", base / "mnt"
    mounted = False
    if os.geteuid() == 0 and shutil.which("mkfs.ext4"):
        mnt.mkdir()
        try:
            subprocess.run(["truncate", "-s", "2G", str(img)], check=True)
            subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
            subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True,
                           capture_output=True)
            mounted = True
        except (subprocess.CalledProcessError, OSError):
            mounted = False
    try:
        if mounted:
            yield mnt, "loop-mounted journaled ext4"
        else:
            yield base, "the root filesystem (no loop mount possible)"
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)
