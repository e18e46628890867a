"""Steps the scenarios share: send from a namespace, wait for a tag to land, read it over POP."""

from __future__ import annotations

import re
from pathlib import Path

from tests.consortium.harness import PASSWORD, PORTS, Appliance, Consortium, wait_for

TAG_HEADER = re.compile(rb"^X-Consortium-Tag:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


def tags_in(files: list[Path]) -> list[str]:
    """The X-Consortium-Tag of every delivered file (one per message copy)."""
    out = []
    for f in files:
        try:
            head = f.read_bytes().split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        except OSError:  # renamed new/ -> cur/ by a reader meanwhile
            continue
        m = TAG_HEADER.search(head)
        if m:
            out.append(m.group(1).decode())
    return out


def wait_delivered(box: Appliance, address: str, tags: set[str], timeout: float = 120,
                   interval: float = 0.25) -> list[str]:
    def arrived() -> list[str] | None:
        got = tags_in(box.inbox_files(address))
        return got if tags <= set(got) else None

    try:
        return wait_for(f"{len(tags)} messages in {address}'s INBOX at {box.name}", arrived, timeout, interval)
    except AssertionError as exc:
        queue = [p.name for p in box.queue_files()]
        missing = sorted(tags - set(tags_in(box.inbox_files(address))))
        raise AssertionError(f"{exc}; missing {missing[:20]}; {box.name} queue {queue[:20]}") from None


def imap_args(box: Appliance, user: str) -> list[str]:
    return ["--host", box.address, "--port", str(PORTS["imap"]), "--cafile", str(box.cert),
            "--user", user, "--password", box.passwords.get(user, PASSWORD)]


def pop_args(box: Appliance, user: str) -> list[str]:
    return ["--host", box.address, "--port", str(PORTS["pop3"]), "--cafile", str(box.cert),
            "--user", user, "--password", box.passwords.get(user, PASSWORD)]


def smtp_args(box: Appliance, user: str = "", password: str | None = None, port: str = "submission") -> list[str]:
    args = ["--host", box.address, "--port", str(PORTS[port]), "--cafile", str(box.cert)]
    if user:
        args += ["--user", user, "--password", password if password is not None else box.passwords.get(user, PASSWORD)]
    return args


def pop_read(world: Consortium, where: str, box: Appliance, user: str) -> dict[str, dict[str, list[str]]]:
    """Read USER's mailbox over POP from namespace WHERE; headers by tag."""
    res = world.client(where, "pop-fetch", *pop_args(box, user))
    out = {}
    for m in res["messages"]:
        for tag in m["headers"].get("x-consortium-tag", []):
            out[tag] = m["headers"]
    return out


def retry_after(text: str) -> float:
    m = re.search(r"retry in (\d+(?:\.\d+)?) ?s", text)
    assert m, f"a rate-limit reply must say when to retry: {text!r}"
    return float(m.group(1))
