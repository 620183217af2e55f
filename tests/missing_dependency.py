"""What a test does when a service it needs is not there: skip loudly, or fail under CI=true (where
a missing Postgres or vLLM is a broken set-up, never a reason to skip)."""

from __future__ import annotations

import os
import warnings
from typing import NoReturn

import pytest


def skip_loudly_or_fail(message: str, what: str) -> NoReturn:
    """``message`` says what is missing and that the tests are skipped; ``what`` names it for CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} -- in CI a missing {what} is a failure")
    warnings.warn(message, stacklevel=2)
    print(f"\n!!! {message} !!!")
    pytest.skip(message)
