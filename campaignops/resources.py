"""The resources a run uses, created once per process and passed down to every step.

``open_resources()`` reads the settings in force and returns the warehouse opened for them;
the warehouse (engine, checks, migrations) is opened once per URL and process and reused
by every task of every run in the process. The ESP client is made at handoff (it needs the
token, which is read only then).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from campaignops.settings import Settings, load_settings
from campaignops.warehouse import Warehouse, open_warehouse

_MAX_OPEN = 8  # warehouses kept open per process (tests open many; a run uses one)
_open: OrderedDict[str, Warehouse] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class Resources:
    """Settings and the warehouse for one run."""

    settings: Settings
    warehouse: Warehouse


def warehouse_for(url: str) -> Warehouse:
    """The process's warehouse at ``url``, opened (checked and migrated) on first use."""
    with _lock:
        wh = _open.get(url)
        if wh is not None:
            _open.move_to_end(url)
            return wh
    wh = open_warehouse(url)
    with _lock:
        if url in _open:  # another thread opened it meanwhile: keep one
            wh.dispose()
            return _open[url]
        _open[url] = wh
        while len(_open) > _MAX_OPEN:
            _open.popitem(last=False)[1].dispose()
    return wh


def open_resources(settings: Settings | None = None) -> Resources:
    """The resources for the settings in force (the environment, unless given)."""
    s = settings or load_settings()
    return Resources(settings=s, warehouse=warehouse_for(s.resolved_warehouse_url))
