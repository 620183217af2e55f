"""Fail an image build whose installed Python packages drift from requirements/lock.txt.

Usage: python docker/check_lock.py requirements/lock.txt [--strict]
Every installed distribution the lock names must have the locked version; with --strict, every
installed distribution must be in the lock (the project itself and pip/setuptools/wheel aside).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys

# Installed by venv/pip for the build itself, or the project being installed.
EXEMPT = {"pip", "setuptools", "wheel", "xrouter"}


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """``name==version`` lines of a pip freeze (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"lock line {number}: {raw!r} is not name==version")
        pins[canonical(name.strip().split("[", 1)[0])] = version.strip()
    return pins


def drift(installed: dict[str, str], pins: dict[str, str], strict: bool) -> list[str]:
    """Human-readable problems: version mismatches, and (strict) packages the lock does not name."""
    problems = []
    for name, version in sorted(installed.items()):
        if name in EXEMPT:
            continue
        if name in pins and pins[name] != version:
            problems.append(f"{name} {version} installed, the lock pins {pins[name]}")
        elif name not in pins and strict:
            problems.append(f"{name} {version} installed but not in the lock (regenerate it with `make lock`)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    with open(args.lock, encoding="utf-8") as handle:
        pins = read_lock(handle.read())
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    problems = drift(installed, pins, args.strict)
    for problem in problems:
        print(f"check_lock: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_lock: {len(installed)} installed distributions agree with {args.lock}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
