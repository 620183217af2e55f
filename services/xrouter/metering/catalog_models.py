"""Which models a budget may name: those of the catalog the adapters serve.

A budget on a model is matched by name against the calls the router records. A misspelt name
("gpt-4-1106" for "gpt-4-1106-preview") matched nothing, so the budget was stored, reported set,
and never held back a single call. With the catalog known (``XROUTER_METERING_CATALOG``, the file the
adapters serve; the chart mounts the same ConfigMap) SetBudget refuses such a name and says which
models it may have meant. The file is re-read when it changes (a ConfigMap update), so a model added
to the catalog can be budgeted without a restart.
"""

from __future__ import annotations

import difflib
import logging
import pathlib

from xrouter.adapters.catalog import CatalogError, model_ids
from xrouter.common.errors import InvalidArgument

log = logging.getLogger(__name__)


class CatalogModels:
    """The model ids of a catalog file, re-read when its modification time or size changes. A file
    that became unreadable keeps the last good list (and says so in the log); one never readable
    raises :class:`CatalogError` (the service's settings check runs this at start-up)."""

    def __init__(self, path: pathlib.Path | str) -> None:
        self.path = pathlib.Path(path)
        self._stamp: tuple[int, int] | None = None
        self._ids: frozenset[str] | None = None

    def __call__(self) -> frozenset[str]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._ids, self._stamp = model_ids(self.path), stamp
        except (OSError, CatalogError) as error:
            if isinstance(error, OSError):
                error = CatalogError(f"{self.path}: cannot read the catalog: {error.strerror or error}")
            if self._ids is None:
                raise error from None
            log.warning("metering: the catalog %s is unreadable (%s); budgets are checked against its last "
                        "good version", self.path, error)
        assert self._ids is not None
        return self._ids


def check_budget_model(model: str, known: frozenset[str], removing: bool) -> None:
    """Refuse a budget on a model the catalog does not list. Removing one stays allowed: a budget on
    a model since dropped from the catalog must be removable."""
    if not model or model in known or removing:
        return
    close = difflib.get_close_matches(model, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(m) for m in close)}?" if close else ""
    raise InvalidArgument("model", f"{model!r} is not a model of the catalog, so a budget on it would never "
                                   f"match a call{hint} (the catalog lists {len(known)} models; leave model "
                                   "empty for a budget on all of them)")
