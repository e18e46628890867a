"""Open sessions during `appliance user move` (issue 16): the move holds the account at the old home
box's access service (run_dir/access-moves.sock, services/access/moves.py) before its final copy.

- three sessions open on the old box (IMAP selected, IMAP in IDLE, POP3 with a message marked
  deleted) get `* BYE [UNAVAILABLE]` / `-ERR [SYS/TEMP]`; reconnecting (now proxied to the new
  box) shows the same UIDVALIDITY, UIDs and the flags set just before the move, and the POP3
  session's DELE was not carried out;
- while an account is held its IMAP and POP3 logins are refused as temporary, another account's
  are served; the hold ends with the connection that made it;
- a command still running past `--hold-wait` stops the move, and a hold lost to a restart of the
  access service is detected: both leave `home` unchanged.

Uses the two-box fleet of tests/fleet/test_home_boxes.py (its own instance for this module).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import test_home_boxes
from tests.fleet.test_home_boxes import (
    PASSWORD,
    Fleet,
    add_user,
    imap_login,
    in_maildir,
    mailbox_view,
    send,
)
from tests.helpers.box import APPLIANCE, Box, pids_under, wait_port
from tests.helpers.wait import wait_for

fleet = test_home_boxes.fleet  # the two-box fixture, its own instance for this module


def pop3_login(box: Box, user: str) -> poplib.POP3_SSL:
    pop = poplib.POP3_SSL(box.host("pop3s"), box.port("pop3s"), context=box.client_tls(), timeout=60)
    pop.user(user)
    pop.pass_(PASSWORD)
    return pop


def home_of(box: Box, user: str) -> str:
    return next(line.split(":", 1)[1].split()[0] for line in box.cli("user", "show", user).stdout.splitlines()
                if line.strip().startswith("home:"))


@contextlib.contextmanager
def held(box: Box, user: str) -> Iterator[socket.socket]:
    """Hold USER at BOX's access service the way a move does (its unix socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(Path(box.cfg.paths.run_dir) / "access-moves.sock"))
    try:
        s.sendall(f"HOLD {user}\n".encode())
        assert s.makefile("rb").readline().startswith(b"OK ")
        yield s
    finally:
        s.close()


def refused(box: Box, user: str) -> bool:
    try:
        imap_login(box, user).logout()
    except imaplib.IMAP4.error as exc:
        return "being moved" in str(exc)
    return False


def access_pid(box: Box) -> int:
    pids = [p for p in pids_under(box.dir) if b"services.access" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(pids) == 1, pids
    return pids[0]


def test_sessions_on_the_old_box_end_cleanly_and_the_move_keeps_what_they_did(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    gil = add_user(a, "gil", "a")
    for n in (1, 2, 3):
        send(b, gil, f"gil {n}")
    wait_for("gil's three messages on box a", lambda: all(in_maildir(a, gil, f"gil {n}") for n in (1, 2, 3)),
             timeout=120)
    selected = imap_login(a, gil)
    idler = imap_login(a, gil)
    pop = pop3_login(a, gil)
    try:
        uidvalidity, msgs = mailbox_view(selected)
        # Flags set just before the move, in a session that stays open.
        assert selected.uid("STORE", str(msgs[0][0]), "+FLAGS", r"(\Flagged \Seen)")[0] == "OK"
        before = mailbox_view(selected)
        assert idler.select("INBOX")[0] == "OK"
        idler.send(b"i1 IDLE\r\n")
        assert idler.readline().startswith(b"+ ")
        assert pop.stat()[0] == 3
        assert pop.dele(1).startswith(b"+OK")  # marked only: UPDATE never comes

        r = a.cli("user", "move", gil, "b", "--target-mail-dir", b.cfg.paths.mail_dir, check=False)
        assert r.returncode == 0, r.stderr
        assert "3 open session(s) on this box ended" in r.stdout

        assert selected.readline().startswith(b"* BYE [UNAVAILABLE]")
        assert idler.readline().startswith(b"* BYE [UNAVAILABLE]")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
            pop.noop()
    finally:
        for closer in (selected.shutdown, idler.shutdown, pop.close):
            with contextlib.suppress(Exception):
                closer()
    assert home_of(a, gil) == "b"
    assert before[0] == uidvalidity and len(before[1]) == 3
    for box in (a, b):  # a proxies gil to b now
        m = imap_login(box, gil)
        try:
            assert mailbox_view(m) == before  # same UIDVALIDITY, UIDs, flags; nothing deleted by POP3
        finally:
            m.logout()


def test_a_held_accounts_logins_are_refused_while_another_is_served(fleet: Fleet) -> None:
    a = fleet.a
    hal, ida = add_user(a, "hal", "a"), add_user(a, "ida", "a")
    with held(a, hal):
        with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\].*being moved"):
            imap_login(a, hal)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\].*being moved"):
            pop3_login(a, hal)
        imap_login(a, ida).logout()
        pop3_login(a, ida).quit()
    # The hold went with its connection (a move that crashed): hal is served again.
    wait_for("hal served again", lambda: imap_login(a, hal).logout(), timeout=30)
    pop3_login(a, hal).quit()


def _stalled_retr(box: Box, user: str) -> poplib.POP3_SSL:
    """A POP3 session whose RETR of a 20 MB message cannot finish: the client reads nothing."""
    new = box.maildir(user) / "new"
    wait_for(f"{user}'s Maildir", new.is_dir, timeout=60)
    (new / f"big-{os.getpid()}.eml").write_bytes(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 20_000)
    pop = pop3_login(box, user)
    pop.sock.sendall(b"RETR 1\r\nRETR 2\r\n")  # one of them is the big one
    return pop


def test_a_command_that_does_not_finish_stops_the_move_with_home_unchanged(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    jo = add_user(a, "jo", "a")
    send(b, jo, "jo 1")
    wait_for("jo's message on box a", lambda: in_maildir(a, jo, "jo 1"), timeout=120)
    pop = _stalled_retr(a, jo)
    try:
        r = a.cli("user", "move", jo, "b", "--target-mail-dir", b.cfg.paths.mail_dir, "--hold-wait", "2",
                  check=False)
        assert r.returncode != 0 and "still runs after 2 s" in r.stderr and "home unchanged" in r.stderr
        assert home_of(a, jo) == "a"
    finally:
        pop.close()
        shutil.rmtree(b.maildir(jo), ignore_errors=True)
    imap_login(a, jo).logout()  # not held any more


def test_a_hold_lost_to_a_restart_of_the_access_service_stops_the_move(fleet: Fleet) -> None:
    a, b = fleet.a, fleet.b
    kim = add_user(a, "kim", "a")
    send(b, kim, "kim 1")
    wait_for("kim's message on box a", lambda: in_maildir(a, kim, "kim 1"), timeout=120)
    pop = _stalled_retr(a, kim)  # keeps the move waiting at its hold
    cmd = [*APPLIANCE, "-c", str(a.config_file), "user", "move", kim, "b", "--target-mail-dir", b.cfg.paths.mail_dir]
    move = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("kim held by the move", lambda: refused(a, kim), timeout=60)
        old = access_pid(a)
        os.kill(old, signal.SIGKILL)  # supervisor starts it again, without the hold
        _, err = move.communicate(timeout=120)
        assert move.returncode != 0 and "home unchanged" in err, err
        assert home_of(a, kim) == "a"
        wait_port(a.host("imaps"), a.port("imaps"), timeout=60)
        wait_for("the access service back", lambda: access_pid(a) != old and not refused(a, kim), timeout=60)
    finally:
        if move.poll() is None:
            move.kill()
            move.wait()
        pop.close()
        shutil.rmtree(b.maildir(kim), ignore_errors=True)
