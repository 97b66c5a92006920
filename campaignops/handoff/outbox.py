"""The outbox: a run's recipients exactly as the handoff will post them, outside the database.

What an approver approves is what is sent. The *send digest* covers every recipient as
it will go out (customer id, address, cell, offer, personalisation values with their
fallbacks, seed flag), in handoff order, plus the template, the send time and the
channel. The approval packet binds to it (``digest_audience``: one streamed read). The
handoff does not trust a second read of ``co_audience``: it streams the audience once
into a private file (``stage``), computing the digest over the very lines it writes,
refuses unless that digest is the approved one, and then posts, writes contact history
and the delivery record from the file alone. A writer with access to the database can
change ``co_audience`` afterwards; nothing that goes out or is recorded follows.

One JSON line per recipient (orjson, sorted keys); memory holds one chunk at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from campaignops.brief import Brief
from campaignops.handoff.batches import iter_batches, personalisation
from campaignops.handoff.send_time import iso_z
from campaignops.handoff.sms import sms_message

CHUNK = 5000
DIGEST_VERSION = "send-digest-v1"


@dataclass(frozen=True)
class Outbox:
    """A staged run: the file of recipients as they will be posted, its count and digest."""

    run_id: str
    path: Path
    recipients: int
    send_digest: str


def header(brief: Brief) -> bytes:
    """What the digest covers besides the recipients: template, send time, channel, fields
    (an SMS run: its text and segment limit too)."""
    fields, fallbacks = personalisation(brief)
    head: dict[str, Any] = {
        "version": DIGEST_VERSION, "campaign_id": brief.campaign_id,
        "template_id": brief.content.template_id, "send_at": iso_z(brief.send_at),
        "channel": brief.channel, "fields": fields, "fallbacks": fallbacks,
    }
    if brief.channel == "sms":
        head |= {"text": brief.content.text, "max_segments": brief.segment_limit}
    return orjson.dumps(head, option=orjson.OPT_SORT_KEYS) + b"\n"


def _lines(engine: Engine, run_id: str, brief: Brief) -> Iterator[bytes]:
    """Each recipient of the run as one canonical JSON line, in handoff order."""
    fields, fallbacks = personalisation(brief)
    dumps, sort = orjson.dumps, orjson.OPT_SORT_KEYS
    sms = sms_message(engine, run_id, brief)
    for _, chunk in iter_batches(engine, run_id, CHUNK, fields, fallbacks, sms):
        yield b"".join(dumps(r, option=sort) + b"\n" for r in chunk)


def digest_audience(engine: Engine, run_id: str, brief: Brief) -> tuple[str, int]:
    """(send digest, recipients) of what the run would send now (one streamed read)."""
    h = hashlib.sha256(header(brief))
    n = 0
    for block in _lines(engine, run_id, brief):
        h.update(block)
        n += block.count(b"\n")
    return h.hexdigest(), n


def path_for(folder: Path, run_id: str) -> Path:
    """The outbox file of a run in ``folder``."""
    return folder / f"{run_id}.jsonl"


def stage(engine: Engine, run_id: str, brief: Brief, folder: Path) -> Outbox:
    """Stream the run's recipients into a private file (folder mode 700, file 600), digested."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = path_for(folder, run_id)
    tmp = path.with_suffix(".tmp")
    h = hashlib.sha256(header(brief))
    n = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in _lines(engine, run_id, brief):
                h.update(block)
                out.write(block)
                n += block.count(b"\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Outbox(run_id, path, n, h.hexdigest())


def batches(outbox: Outbox, batch_size: int) -> Generator[tuple[int, list[dict[str, Any]]], None, None]:
    """``(batch_seq, recipients)`` cut from the outbox file: what the handoff posts."""
    seq, batch = 0, []
    with outbox.path.open("rb") as fh:
        for line in fh:
            batch.append(orjson.loads(line))
            if len(batch) == batch_size:
                yield seq, batch
                seq, batch = seq + 1, []
    if batch:
        yield seq, batch


def recipients(outbox: Outbox) -> Iterator[dict[str, Any]]:
    """Every recipient of the outbox, in order."""
    with outbox.path.open("rb") as fh:
        for line in fh:
            yield orjson.loads(line)


def discard(outbox: Outbox) -> None:
    """Remove the outbox file (it holds addresses: it lives only as long as the handoff)."""
    with contextlib.suppress(FileNotFoundError):
        outbox.path.unlink()
