"""appliance/hostport.py: the one HOST:PORT parser (fleet.boxes.*, `practice probe`, `registry add-member --relay`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance import hostport


@pytest.mark.parametrize(("value", "expected"), [
    ("mx.example.net:25", ("mx.example.net", 25)),
    ("mx.example.net.:2525", ("mx.example.net.", 2525)),
    ("192.0.2.7:587", ("192.0.2.7", 587)),
    ("[2001:db8::7]:465", ("2001:db8::7", 465)),
    ("[::1]:65535", ("::1", 65535)),
    ("a-b.c1:1", ("a-b.c1", 1)),
])
def test_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert hostport.parse(value, "fleet.boxes.a.relay") == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("mx.example.net", ("mx.example.net", 25)),
    ("[2001:db8::7]", ("2001:db8::7", 25)),
    ("2001:db8::7", ("2001:db8::7", 25)),
    ("mx.example.net:2525", ("mx.example.net", 2525)),
])
def test_default_port(value: str, expected: tuple[str, int]) -> None:
    assert hostport.parse(value, "--relay", default_port=25) == expected


@pytest.mark.parametrize(("value", "why"), [
    ("[2001:db8::zz]:25", "is not an IPv6 address"),
    ("[2001:db8::7:25", "no ']'"),
    ("[2001:db8::7]x:25", "after ']'"),
    ("[2001:db8::7]:25x", "not a number"),
    ("[192.0.2.7]:25", "is not an IPv6 address"),
    ("mail_relay.example.net:25", "not a host name"),
    ("mail relay:25", "not a host name"),
    ("mx..example.net:25", "not a host name"),
    ("-mx.example.net:25", "not a host name"),
    (":25", "missing host"),
    ("mx.example.net", "missing port"),
    ("mx.example.net:", "not a number"),
    ("mx.example.net:0", "out of range"),
    ("mx.example.net:65536", "out of range"),
    ("mx.example.net:٢٥", "not a number"),
    ("2001:db8::7:25", "needs brackets"),
    ("mx.example.net:25:26", "needs brackets"),
])
def test_refused_naming_the_key(value: str, why: str) -> None:
    with pytest.raises(ValueError) as err:
        hostport.parse(value, "fleet.boxes.a.relay")
    assert str(err.value).startswith(f"fleet.boxes.a.relay: {value!r}: ")
    assert why in str(err.value)


def test_bare_ipv6_with_junk_refused_with_default_port() -> None:
    with pytest.raises(ValueError, match=r"^--relay: .*not an IPv6 address"):
        hostport.parse("2001:db8::7::25", "--relay", default_port=25)


def test_lone_port() -> None:
    assert hostport.port("587", "--submission") == 587
    with pytest.raises(ValueError, match=r"^--submission: '0': port 0 is out of range"):
        hostport.port("0", "--submission")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=60)


def test_practice_probe_names_the_bad_target() -> None:
    # Refused before any connection is tried: the operator sees which argument is wrong.
    r = _cli("practice", "probe", "mail_relay.example.net:25", "--domain", "example.net")
    assert r.returncode != 0
    assert "TARGET: 'mail_relay.example.net:25': " in r.stderr
    r = _cli("practice", "probe", "127.0.0.1:25", "--domain", "example.net", "--submission", "[::1]x:587")
    assert r.returncode != 0
    assert "--submission: '[::1]x:587': 'x:587' after ']'" in r.stderr
