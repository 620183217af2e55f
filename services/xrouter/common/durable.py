"""Making a write survive a crash."""

from __future__ import annotations

import os
import pathlib


def fsync_path(path: pathlib.Path) -> None:
    """Flush a file, or a directory's entries (a new or renamed name in it), to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
