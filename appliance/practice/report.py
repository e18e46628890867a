"""Probe and self-check reports: JSON documents, their hash, and the member's signature.

A report is ``{"kind", "code_of_practice", "target", "member", "date", "results",
"observed"}``; it *passes* when every result is ``pass``. Its hash is the SHA-256
of its canonical JSON (sorted keys, no spaces, without any ``signature``), which
is what `appliance registry add-member` records in the member's entry.

A self-check report is signed with the box's TLS private key (securesystemslib's
``CryptoSigner``, as the registry's keys are). The registry already pins that
key's SPKI SHA-256 for the member's relays, so anyone holding the registry can
tell the report came from the member's own box: ``verify`` checks the signature
and that the signing key's SPKI is one of the member's pins.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from securesystemslib.signer import CryptoSigner, Signature, SSlibKey

from appliance.practice.probes import PASS, Result


class ReportError(ValueError):
    """A report that cannot be used; the message says why in one line."""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def make(kind: str, code_version: str, target: str, member: str | None, results: list[Result],
         observed: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": kind, "code_of_practice": code_version, "target": target, "member": member,
            "date": now_iso(), "results": [r.as_dict() for r in results], "observed": observed or {}}


def canonical(report: dict[str, Any]) -> bytes:
    body = {k: v for k, v in report.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(report)).hexdigest()


def failed(report: dict[str, Any]) -> list[str]:
    """Controls that did not pass (failed or not run)."""
    return [r["control"] for r in report.get("results", []) if r.get("status") != PASS]


def passes(report: dict[str, Any]) -> bool:
    return bool(report.get("results")) and not failed(report)


def date_of(report: dict[str, Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(report["date"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise ReportError("report: missing or malformed date") from None


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ReportError(f"{p}: cannot read: {exc}") from None
    except ValueError as exc:
        raise ReportError(f"{p}: not a JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ReportError(f"{p}: not a practice report (no results)")
    return data


# --- signatures ---------------------------------------------------------------------------------

def _spki(public_key: Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def sign(report: dict[str, Any], key_file: str | Path) -> dict[str, Any]:
    """Add ``signature`` made with the PEM private key in KEY_FILE (the box's TLS key)."""
    try:
        private = load_pem_private_key(Path(key_file).read_bytes(), password=None)
        signer = CryptoSigner(private)
    except (OSError, ValueError, TypeError) as exc:
        raise ReportError(f"{key_file}: cannot load the signing key: {exc}") from None
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sig = signer.sign(canonical(report))
    signed = dict(report)
    signed["signature"] = {"keyid": sig.keyid, "sig": sig.signature, "public_key": pem, "spki_sha256": _spki(public),
                           "scheme": signer.public_key.scheme}
    return signed


def verify(report: dict[str, Any], pins: frozenset[str] | None = None) -> str:
    """Check REPORT's signature (and, given PINS, that the key is pinned); return the key's SPKI."""
    s = report.get("signature")
    if not isinstance(s, dict):
        raise ReportError("report is not signed")
    try:
        crypto_key = load_pem_public_key(str(s["public_key"]).encode())
        key = SSlibKey.from_crypto(crypto_key, scheme=str(s["scheme"]))  # type: ignore[arg-type]
        key.verify_signature(Signature(key.keyid, str(s["sig"])), canonical(report))
    except Exception as exc:  # securesystemslib raises several types; all mean "not valid"
        raise ReportError(f"signature does not verify: {exc}") from None
    spki = _spki(crypto_key)
    if pins is not None and spki not in pins:
        raise ReportError(f"signing key SPKI {spki} is not one of the member's pins")
    return spki

