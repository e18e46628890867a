"""`appliance user move ADDRESS BOX --ssh USER@HOST:PORT` (issue 16): the Maildir goes to the target
box over SSH with rsync, the key restricted by rrsync to box b's mail directory.

A private sshd (tests/fleet/sshd_server.py) on 127.0.0.1 stands for box b's: its authorized_keys
line is `command="rrsync B_MAIL_DIR",restrict`. The move on box a is never told where b's mail
directory is; it reaches it only through that key (the first move runs where that directory is
hidden under an empty tmpfs).

- a move keeps UIDVALIDITY, UIDs, flags and expunges (seen by IMAP directly on b and proxied
  through a), flips `home`, and later mail goes to b;
- a message that lands in a's Maildir after the flip (a delivery that looked up `home` before it)
  reaches b by the second catch-up;
- a wrong host key, a missing known_hosts and a target that is not empty are refused, `home` unchanged;
- the rrsync key cannot write outside the mail directory, nor run a command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.sshd_server import SshdServer, keygen
from tests.fleet.test_home_boxes import add_user, fleet_config, imap_login, in_maildir, mailbox_view, send
from tests.fleet.test_home_move_sessions import _stalled_retr, home_of, refused
from tests.fleet.two_boxes import TwoBoxes, two_boxes
from tests.helpers.box import APPLIANCE, Box
from tests.helpers.wait import wait_for


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TwoBoxes, SshdServer]]:
    tmp = tmp_path_factory.mktemp("sshmove")
    with two_boxes(tmp, tune=fleet_config, distinct_names=True,
                   before=lambda f: add_user(f.a, "sender", "a")) as boxes:
        mail_b = Path(boxes.b.cfg.paths.mail_dir)
        mail_b.mkdir(parents=True, exist_ok=True)
        sshd = SshdServer(tmp / "sshd", mail_b)
        sshd.start()
        try:
            yield boxes, sshd
        finally:
            sshd.stop()


def move(a: Box, sshd: SshdServer, user: str, *extra: str, known_hosts: Path | None = None) -> list[str]:
    return ["user", "move", user, "b", "--ssh", sshd.target(), "--ssh-key", str(sshd.client_key),
            "--known-hosts", str(known_hosts or sshd.known_hosts), *extra]


def with_mail(fleet: tuple[TwoBoxes, SshdServer], local: str, count: int) -> str:
    boxes, _ = fleet
    user = add_user(boxes.a, local, "a")
    for n in range(1, count + 1):
        send(boxes.b, user, f"{local} {n}")
    wait_for(f"{local}'s messages on box a",
             lambda: all(in_maildir(boxes.a, user, f"{local} {n}") for n in range(1, count + 1)), timeout=120)
    return user


def view(box: Box, user: str) -> tuple[int, list[tuple[int, str, str]]]:
    m = imap_login(box, user)
    try:
        return mailbox_view(m)
    finally:
        m.logout()


def test_a_move_over_ssh_keeps_uids_flags_and_expunges(fleet: tuple[TwoBoxes, SshdServer]) -> None:
    (boxes, sshd) = fleet
    a, b = boxes.a, boxes.b
    nia = with_mail(fleet, "nia", 4)
    m = imap_login(a, nia)
    try:
        _, msgs = mailbox_view(m)
        assert m.uid("STORE", str(msgs[1][0]), "+FLAGS", r"(\Seen \Answered)")[0] == "OK"
        assert m.uid("STORE", str(msgs[3][0]), "+FLAGS", r"(\Flagged)")[0] == "OK"
        assert m.uid("STORE", str(msgs[0][0]), "+FLAGS", r"(\Deleted)")[0] == "OK"
        m.expunge()
        before = mailbox_view(m)
    finally:
        m.logout()
    assert len(before[1]) == 3

    # The move runs in a mount namespace of its own where b's mail directory is an empty tmpfs:
    # it can reach b's Maildir only through the rrsync key.
    mail_b = b.cfg.paths.mail_dir
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"', "sh", mail_b]
    r = subprocess.run([*hide, *APPLIANCE, "-c", str(a.config_file), *move(a, sshd, nia, "--late-wait", "0")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "UIDs kept" in r.stdout and "127.0.0.1:example.test/nia (port" in r.stdout
    assert home_of(a, nia) == "b" and home_of(b, nia) == "b"
    assert view(b, nia) == before  # directly on b: same UIDVALIDITY, UIDs, flags, the expunge kept
    assert view(a, nia) == before  # through a, proxied to b
    send(a, nia, "nia after the move")
    wait_for("new mail for nia on box b", lambda: in_maildir(b, nia, "nia after the move"), timeout=120)
    assert not in_maildir(a, nia, "nia after the move")
    after = view(b, nia)
    assert after[0] == before[0] and after[1][:3] == before[1] and after[1][3][0] > before[1][-1][0]


def _deliver_like_the_relay(box: Box, user: str, subject: str) -> None:
    """Write a message into USER's new/ on BOX as local delivery does (tmp/, then a rename)."""
    root = box.maildir(user)
    name = f"{int(time.time())}.M1P{os.getpid()}.late"
    (root / "tmp" / name).write_bytes(f"Subject: {subject}\r\nFrom: x@example.test\r\n\r\nlate\r\n".encode())
    (root / "tmp" / name).rename(root / "new" / name)


@pytest.mark.parametrize("local", ["oli", "uma"])
def test_mail_landing_on_the_old_box_after_the_flip_is_caught_up(
        fleet: tuple[TwoBoxes, SshdServer], local: str) -> None:
    """Over ssh (oli) and with the local copy (uma): the second catch-up is the same code path."""
    (boxes, sshd) = fleet
    a, b = boxes.a, boxes.b
    user = with_mail(fleet, local, 2)
    before = view(a, user)
    how = (move(a, sshd, user) if local == "oli"
           else ["user", "move", user, "b", "--target-mail-dir", b.cfg.paths.mail_dir])
    cmd = [*APPLIANCE, "-c", str(a.config_file), *how, "--late-wait", "20"]
    mv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("home flipped to b", lambda: mv.poll() is None and home_of(a, user) == "b", timeout=120)
        # A delivery that looked up `home` before the flip writes into the old Maildir now.
        _deliver_like_the_relay(a, user, f"{local} late")
        out, err = mv.communicate(timeout=120)
    finally:
        if mv.poll() is None:
            mv.kill()
            mv.wait()
    assert mv.returncode == 0, err
    assert "1 late arrival(s)" in out
    after = view(b, user)
    assert after[0] == before[0] and after[1][:2] == before[1]
    assert [s for _, _, s in after[1]] == [f"{local} 1", f"{local} 2", f"{local} late"]


def test_a_wrong_host_key_or_a_full_target_is_refused_with_home_unchanged(
        fleet: tuple[TwoBoxes, SshdServer], tmp_path: Path) -> None:
    (boxes, sshd) = fleet
    a, b = boxes.a, boxes.b
    pia = with_mail(fleet, "pia", 1)
    other = keygen(tmp_path / "other_host_key", "not-the-target")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    r = a.cli(*move(a, sshd, pia, known_hosts=wrong), check=False)
    assert r.returncode != 0
    assert "Host key verification failed" in r.stderr and "home unchanged (a)" in r.stderr, r.stderr
    assert home_of(a, pia) == "a" and not b.maildir(pia).exists()

    r = a.cli("user", "move", pia, "b", "--ssh", sshd.target(), check=False)
    assert r.returncode != 0 and "--known-hosts" in r.stderr
    assert home_of(a, pia) == "a"

    (b.maildir(pia) / "cur").mkdir(parents=True)
    (b.maildir(pia) / "cur" / "someone-elses").write_text("x")
    r = a.cli(*move(a, sshd, pia), check=False)
    assert r.returncode != 0 and "exists and is not empty" in r.stderr and "home unchanged" in r.stderr, r.stderr
    assert home_of(a, pia) == "a"
    assert view(a, pia)[1][0][2] == "pia 1"  # still served from a


def test_the_rrsync_key_writes_nothing_outside_the_mail_dir(
        fleet: tuple[TwoBoxes, SshdServer], tmp_path: Path) -> None:
    (boxes, sshd) = fleet
    b = boxes.b
    mail_b = Path(b.cfg.paths.mail_dir)
    payload = tmp_path / "payload"
    payload.write_text("not mail\n")
    outside = mail_b.parent / f"outside-{tmp_path.name}"
    e = " ".join(sshd.client())
    for dest in (f"127.0.0.1:../{outside.name}", f"127.0.0.1:{outside}"):
        subprocess.run(["rsync", "-e", e, str(payload), dest], capture_output=True, text=True, timeout=60, check=False)
        assert not outside.exists(), dest
    r = subprocess.run([*sshd.client(), "127.0.0.1", f"touch {outside}"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode != 0 and "does not run rsync" in r.stderr
    assert not outside.exists()
    # What it may do: write under the mail directory.
    r = subprocess.run(["rsync", "-e", e, str(payload), "127.0.0.1:inside"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (mail_b / "inside").read_text() == "not mail\n"
    (mail_b / "inside").unlink()


@pytest.mark.parametrize(("options", "refusal"), [
    (["--ssh", "bad_host:22"], "--ssh: 'bad_host:22': 'bad_host' is not a host name"),
    (["--ssh", "x@-oProxyCommand=sh"], "is not a host name"),
    (["--ssh=-l@127.0.0.1"], "'-l' is not a user name"),
    (["--ssh", "127.0.0.1:99999"], "--ssh"),
    (["--ssh", "127.0.0.1", "--known-hosts", "/nonexistent"], "--known-hosts /nonexistent: no such file"),
    (["--target-mail-dir", "/tmp", "--known-hosts", "/etc/hostname"], "--known-hosts and --ssh-key go with --ssh"),
    (["--ssh", "127.0.0.1", "--late-wait", "61"], "--late-wait 61: must be between 0 and 60"),
])
def test_bad_move_options_are_refused_naming_the_option(
        fleet: tuple[TwoBoxes, SshdServer], options: list[str], refusal: str) -> None:
    boxes, _ = fleet
    a = boxes.a
    qin = f"qin@{a.domain}"
    if a.cli("user", "show", qin, check=False).returncode != 0:
        add_user(a, "qin", "a")
    r = a.cli("user", "move", qin, "b", *options, check=False)
    assert r.returncode != 0 and refusal in r.stderr, r.stderr
    assert home_of(a, qin) == "a"


def test_no_server_or_a_full_target_disk_stops_the_move_with_the_error(
        fleet: tuple[TwoBoxes, SshdServer], tmp_path: Path) -> None:
    boxes, sshd = fleet
    a = boxes.a
    ray = with_mail(fleet, "ray", 1)
    # Nothing listens there: ssh's own words, home unchanged.
    nobody = SshdServer(tmp_path / "nobody", tmp_path)  # keys and a port, never started
    r = a.cli("user", "move", ray, "b", "--ssh", nobody.target(), "--known-hosts", str(nobody.known_hosts),
              check=False)
    assert r.returncode != 0 and "Connection refused" in r.stderr and "home unchanged (a)" in r.stderr, r.stderr
    assert home_of(a, ray) == "a"
    # A target whose disk is full (a 64 KiB tmpfs): rsync's error, home unchanged, mail still served on a.
    big = a.maildir(ray) / "new" / f"{int(time.time())}.M2P{os.getpid()}.big"
    big.write_bytes(b"Subject: ray big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 200)
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    full = SshdServer(tmp_path / "sshd-full", full_dir)
    full.start(tmpfs=(full_dir, "64k"))
    try:
        r = a.cli("user", "move", ray, "b", "--ssh", full.target(), "--known-hosts", str(full.known_hosts),
                  "--ssh-key", str(full.client_key), check=False)
    finally:
        full.stop()
    # rsync's own words when they arrive; its receiver can die on the full disk before they do, and
    # then the exit code's meaning says it (rsync(1), EXIT VALUES 11).
    assert r.returncode != 0 and "home unchanged (a)" in r.stderr, r.stderr
    assert "No space left on device" in r.stderr or "rsync exit 11, error in file I/O" in r.stderr, r.stderr
    assert home_of(a, ray) == "a"
    assert sorted(s for _, _, s in view(a, ray)[1]) == ["ray 1", "ray big"]


def test_what_changes_between_the_first_copy_and_the_hold_is_mirrored(fleet: tuple[TwoBoxes, SshdServer]) -> None:
    """A POP3 RETR the client does not read keeps the move waiting at its hold, after its first copy:
    meanwhile a folder is deleted and a message arrives; the final copy under the hold mirrors both."""
    boxes, sshd = fleet
    a, b = boxes.a, boxes.b
    sam = with_mail(fleet, "sam", 1)
    m = imap_login(a, sam)
    try:
        assert m.create("Old")[0] == "OK"
        assert m.append("Old", "", None, b"Subject: in old\r\n\r\nold\r\n")[0] == "OK"
    finally:
        m.logout()
    assert a.maildir(sam, "Old").is_dir()
    pop = _stalled_retr(a, sam)
    cmd = [*APPLIANCE, "-c", str(a.config_file), *move(a, sshd, sam, "--late-wait", "0", "--hold-wait", "120")]
    mv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("sam held by the move (its first copy done)", lambda: refused(a, sam), timeout=120)
        assert b.maildir(sam, "Old").is_dir()  # the first copy took the folder
        shutil.rmtree(a.maildir(sam, "Old"))  # as an IMAP DELETE would, before the hold
        _deliver_like_the_relay(a, sam, "sam during")
        pop.close()  # the stalled command ends: the hold is taken, the final copy runs
        out, err = mv.communicate(timeout=120)
    finally:
        if mv.poll() is None:
            mv.kill()
            mv.wait()
        pop.close()
    assert mv.returncode == 0, err
    assert not b.maildir(sam, "Old").exists()
    m = imap_login(b, sam)
    try:
        names = [line.decode() for line in m.list()[1] if line]
        assert not any('"Old"' in n or n.endswith(" Old") for n in names), names
        subjects = sorted(s for _, _, s in mailbox_view(m)[1])
    finally:
        m.logout()
    assert "sam 1" in subjects and "sam during" in subjects and "big" in subjects
