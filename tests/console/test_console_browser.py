"""The web console in a real browser (Debian chromium, JavaScript off) against a running dev box."""

from __future__ import annotations

import base64
import json
import plistlib
import re
import smtplib
import ssl
import subprocess
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from tests.console.conftest import ADMIN_PASSWORD, USER_PASSWORD, Console, login, require_curl, screenshot, submit
from tests.helpers.wait import wait_for

TB = "{http://www.w3.org/1999/xhtml}"


def send(c: Console, to: str, subject: str, count: int = 1) -> None:
    """Submit COUNT messages as bob on port 587 (STARTTLS, AUTH), as a mail client would."""
    ctx = ssl.create_default_context(cafile=c.box.cfg.tls.cert)
    ctx.check_hostname = False
    with smtplib.SMTP(c.box.host("submission"), c.box.port("submission"), timeout=30) as s:
        s.starttls(context=ctx)
        s.login(c.user, USER_PASSWORD)
        body = "body line of the console test\r\n" * 20
        for i in range(count):
            s.sendmail(c.user, [to], f"From: {c.user}\r\nTo: {to}\r\nSubject: {subject} {i}\r\n\r\n{body}".encode())


def queue(c: Console) -> list[dict]:
    return json.loads(c.box.cli("queue", "list", "--json").stdout)


def accounts(c: Console) -> dict[str, dict]:
    return {a["address"]: a for a in json.loads(c.box.cli("user", "list", "--json").stdout)}


def session_cookie(driver: webdriver.Chrome) -> str:
    cookie = driver.get_cookie("console_session")
    assert cookie, "no session cookie after login"
    # Secure, HttpOnly, SameSite=Strict: never over plain HTTP, never to script, never from another site.
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    return str(cookie["value"])


def test_admin_logs_in_and_reads_the_health_page(console: Console, browser: webdriver.Chrome) -> None:
    login(browser, console, console.admin, ADMIN_PASSWORD)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Health"
    services = browser.find_element(By.ID, "services").text
    for name in ("relay", "access", "registry_sync", "console"):
        assert re.search(rf"^{name} running \d+", services, re.M), services
    assert browser.find_element(By.ID, "overall").text == "All services running"
    assert re.search(r"self-signed certificate .* \((8\d\d) days left\)", browser.find_element(By.ID, "cert").text)
    assert "version 1," in browser.find_element(By.ID, "registry").text
    assert "MiB" in browser.find_element(By.ID, "disk").text
    session_cookie(browser)
    screenshot(browser, "health")


def test_wrong_password_and_non_admin_are_refused(console: Console, browser: webdriver.Chrome) -> None:
    login(browser, console, console.admin, "not the password")
    assert "Wrong login or password." in browser.find_element(By.ID, "flash").text
    assert browser.get_cookie("console_session") is None
    login(browser, console, console.user, USER_PASSWORD)  # right password, but a customer
    assert f"{console.user} is not a console administrator" in browser.find_element(By.ID, "flash").text
    assert browser.get_cookie("console_session") is None
    browser.get(console.url + "/queue")
    assert browser.current_url.endswith("/login")
    # Logged in as a customer (the customer page), the operator's pages are still refused.
    login(browser, console, console.user, USER_PASSWORD, "/account/login")
    status, body, _ = console.request("GET", "/accounts", session=session_cookie(browser))
    assert status == 403 and b"not a console administrator" in body
    audit = audit_rows(console)
    assert f"login (admin) | {console.admin} | failed: wrong login or password" in audit
    assert f"login (admin) | {console.user} | refused: not a console administrator" in audit


def audit_rows(c: Console) -> str:
    """The audit log's rows as text (the audit page shows the same table)."""
    import sqlite3

    db = sqlite3.connect(f"{c.box.cfg.paths.state_dir}/console.sqlite3")
    try:
        rows = db.execute("SELECT action, target, result FROM audit ORDER BY id").fetchall()
    finally:
        db.close()
    return "\n".join(" | ".join(r) for r in rows)


def test_csrf_token_is_enforced(console: Console, browser: webdriver.Chrome) -> None:
    login(browser, console, console.admin, ADMIN_PASSWORD)
    session = session_cookie(browser)
    carol = f"carol@{console.box.domain}"
    for form in ({"address": carol}, {"address": carol, "csrf": "forged"}):
        status, body, _ = console.request("POST", "/accounts/hold", urllib.parse.urlencode(form).encode(), session)
        assert status == 403 and b"CSRF" in body, (status, body)
    assert not accounts(console)[carol]["held"]
    # The login form has its own token too.
    status, _, _ = console.request("POST", "/login", urllib.parse.urlencode(
        {"login": console.admin, "password": ADMIN_PASSWORD}).encode())
    assert status == 403
    browser.get(console.url + "/audit")
    assert "refused: missing or wrong CSRF token" in browser.find_element(By.ID, "audit").text


def test_hold_and_release_an_account(console: Console, browser: webdriver.Chrome) -> None:
    carol = f"carol@{console.box.domain}"
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/accounts")
    row = browser.find_element(By.ID, f"acct-{carol}")
    row.find_element(By.NAME, "reason").clear()
    row.find_element(By.NAME, "reason").send_keys("phished, says the helpdesk")
    submit(browser, row.find_element(By.NAME, "hold"))
    assert "held" in browser.find_element(By.ID, f"acct-{carol}").find_element(By.CLASS_NAME, "state").text
    assert accounts(console)[carol]["held"]  # as `appliance user list` sees it
    held = json.loads(console.box.cli("status", "--json", check=False).stdout)["held_accounts"]
    assert [h["address"] for h in held] == [carol] and "phished" in held[0]["reason"]
    browser.get(console.url + "/limits")
    assert carol in browser.find_element(By.ID, "held").text
    screenshot(browser, "limits")
    submit(browser, browser.find_element(By.ID, "held").find_element(By.TAG_NAME, "button"))
    assert not accounts(console)[carol]["held"]
    browser.get(console.url + "/audit")
    audit = browser.find_element(By.ID, "audit").text
    assert f"account hold {carol} held {carol}: phished" in audit and f"account release {carol} released" in audit
    browser.get(console.url + "/accounts")
    screenshot(browser, "accounts")


def imap_login(c: Console, login: str, password: str) -> bool:
    import imaplib

    ctx = ssl.create_default_context(cafile=c.box.cfg.tls.cert)
    ctx.check_hostname = False
    with imaplib.IMAP4_SSL(c.box.host("imaps"), c.box.port("imaps"), ssl_context=ctx, timeout=30) as imap:
        try:
            return imap.login(login, password)[0] == "OK"
        except imaplib.IMAP4.error:
            return False


def test_add_an_account_reset_its_password_and_disable_it(console: Console, browser: webdriver.Chrome) -> None:
    erin = f"erin@{console.box.domain}"
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/accounts")
    form = browser.find_element(By.ID, "add")
    form.find_element(By.NAME, "address").send_keys(erin)
    form.find_element(By.NAME, "admin").click()
    submit(browser, form.find_element(By.TAG_NAME, "button"))
    shown = browser.find_element(By.ID, "new-password").text
    first = re.fullmatch(rf"New password for {re.escape(erin)} \(shown only now\): (\S+)", shown)
    assert first, shown
    assert erin in accounts(console) and imap_login(console, erin, first.group(1))
    submit(browser, browser.find_element(By.ID, f"acct-{erin}").find_element(By.NAME, "password"))
    second = re.search(r": (\S+)$", browser.find_element(By.ID, "new-password").text)
    assert second and second.group(1) != first.group(1)
    assert imap_login(console, erin, second.group(1)) and not imap_login(console, erin, first.group(1))
    assert accounts(console)[erin]["admin"]
    quota = browser.find_element(By.ID, f"acct-{erin}").find_element(By.NAME, "storage")
    quota.clear()
    quota.send_keys("2M")
    submit(browser, browser.find_element(By.ID, f"acct-{erin}").find_element(By.NAME, "quota"))
    assert accounts(console)[erin]["quota"]["storage"] == 2 * 1024 * 1024  # as `appliance user quota` sets it
    assert "/2M" in browser.find_element(By.ID, f"acct-{erin}").text
    login(browser, console, erin, second.group(1))  # the new admin can log in to the console
    assert browser.find_element(By.TAG_NAME, "h1").text == "Health"
    erin_session = session_cookie(browser)
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/accounts")
    submit(browser, browser.find_element(By.ID, f"acct-{erin}").find_element(By.NAME, "disable"))
    assert accounts(console)[erin]["disabled"]
    assert "disabled" in browser.find_element(By.ID, f"acct-{erin}").find_element(By.CLASS_NAME, "state").text
    assert not imap_login(console, erin, second.group(1))
    status, _, headers = console.request("GET", "/", session=erin_session)  # her open session ended too
    assert status == 303 and headers["Location"] == "/login"


def test_retry_a_deferred_message_from_the_queue_page(console: Console, browser: webdriver.Chrome) -> None:
    dave = f"dave@{console.box.domain}"
    console.box.cli("user", "quota", dave, "--storage", "100")  # smaller than the message: local delivery defers
    send(console, dave, "over quota")
    deferred = wait_for("the message deferred in the queue", lambda: [
        m for m in queue(console) if m["attempts"] >= 1 and m["recipients"][0]["address"] == dave])
    qid = deferred[0]["id"]  # type: ignore[index]
    console.box.cli("user", "quota", dave, "--storage", "0")  # room now; the next attempt is minutes away
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/queue?q=dave")
    assert qid in browser.find_element(By.ID, "queue").text, browser.page_source
    row = browser.find_element(By.ID, f"msg-{qid}")
    assert "pending" in row.text and "4.2.2" in row.text, row.text
    screenshot(browser, "queue")
    submit(browser, row.find_element(By.NAME, "retry"))
    assert f"{qid}: delivery attempt started" in browser.find_element(By.ID, "flash").text
    wait_for("the message delivered", lambda: not queue(console))
    new = list((console.box.maildir(dave) / "new").iterdir())
    assert len(new) == 1 and b"Subject: over quota 0" in new[0].read_bytes()
    browser.get(console.url + "/audit")
    assert f"queue retry {qid} {qid}: delivery attempt started" in browser.find_element(By.ID, "audit").text


def deferred_to(c: Console, address: str, subject: str) -> str:
    """Queue id of a message to ADDRESS that local delivery deferred (its storage quota is set below the
    message's size); the quota is lifted again afterwards, the next attempt being minutes away."""
    c.box.cli("user", "quota", address, "--storage", "100")
    send(c, address, subject)
    rows = wait_for(f"the message to {address} deferred in the queue", lambda: [
        m for m in queue(c) if m["attempts"] >= 1 and m["recipients"][0]["address"] == address])
    c.box.cli("user", "quota", address, "--storage", "0")
    return str(rows[0]["id"])  # type: ignore[index]


def test_hold_and_release_a_queued_message(console: Console, browser: webdriver.Chrome) -> None:
    frank = f"frank@{console.box.domain}"
    qid = deferred_to(console, frank, "held")
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/queue?q=frank")
    submit(browser, browser.find_element(By.ID, f"msg-{qid}").find_element(By.NAME, "hold"))
    assert browser.find_element(By.ID, "flash").text == f"{qid}: held (not attempted until released)"
    row = browser.find_element(By.ID, f"msg-{qid}")
    assert row.find_element(By.CLASS_NAME, "next").text == "1 / held"
    assert not row.find_elements(By.NAME, "retry")  # a held message offers Release only
    screenshot(browser, "queue-held")
    [listed] = [m for m in queue(console) if m["id"] == qid]  # as `appliance queue list` sees it
    assert listed["held"] and listed["next_attempt"] == "held"
    # Neither a flush nor the retry command attempts it.
    console.box.cli("queue", "flush")
    refused = console.box.cli("queue", "retry", qid, check=False)
    assert refused.returncode == 1 and "held" in refused.stderr
    submit(browser, browser.find_element(By.ID, f"msg-{qid}").find_element(By.NAME, "release"))
    assert browser.find_element(By.ID, "flash").text == f"{qid}: released; delivery attempt started"
    wait_for("the released message delivered", lambda: not queue(console))
    new = list((console.box.maildir(frank) / "new").iterdir())
    assert len(new) == 1 and b"Subject: held 0" in new[0].read_bytes()
    browser.get(console.url + "/audit")
    audit = browser.find_element(By.ID, "audit").text
    assert f"queue hold {qid} {qid}: held" in audit and f"queue release {qid} {qid}: released" in audit


def test_set_limits_and_quota_of_an_account(console: Console, browser: webdriver.Chrome) -> None:
    dave = f"dave@{console.box.domain}"
    login(browser, console, console.admin, ADMIN_PASSWORD)
    browser.get(console.url + "/accounts")

    def set_fields(action: str, **values: str) -> None:
        form = browser.find_element(By.ID, f"acct-{dave}").find_element(By.CSS_SELECTOR,
                                                                         f"form[action='/accounts/{action}']")
        for name, value in values.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                Select(field).select_by_visible_text(value)
            else:
                field.clear()
                field.send_keys(value)
        submit(browser, form.find_element(By.TAG_NAME, "button"))

    set_fields("limits", limit_class="bulk", per_minute="5", burst="3", per_day="100")
    assert browser.find_element(By.ID, "flash").text == \
        f"limits of {dave}: class bulk, own limits 5/min, burst 3, 100/day"
    got = accounts(console)[dave]  # as `appliance user list` sees it
    assert got["limit_class"] == "bulk" and got["override"] == {"per_minute": 5.0, "burst": 3, "per_day": 100}
    assert "bulk (own: 5.0/min, burst 3, 100/day)" in browser.find_element(By.ID, f"acct-{dave}").text
    # Bad input: a clear error, nothing changed.
    set_fields("limits", per_minute="fast", burst="3")
    assert browser.find_element(By.ID, "flash").text.startswith("failed: limits")
    set_fields("limits", per_minute="5", burst="")
    assert "per minute and burst go together" in browser.find_element(By.ID, "flash").text
    assert accounts(console)[dave]["override"] == {"per_minute": 5.0, "burst": 3, "per_day": 100}
    # Both rate fields empty: back to the class's limits.
    set_fields("limits", limit_class="default", per_minute="", burst="", per_day="")
    got = accounts(console)[dave]
    assert got["limit_class"] == "default" and got["override"] is None
    set_fields("quota", storage="5M", messages="40")
    quota = accounts(console)[dave]["quota"]  # as `appliance user quota` sets it
    assert quota["storage"] == 5 * 1024 * 1024 and quota["messages"] == 40
    assert "/5M" in browser.find_element(By.ID, f"acct-{dave}").text
    set_fields("quota", messages="many")
    assert "failed: messages many" in browser.find_element(By.ID, "flash").text
    set_fields("quota", storage="default", messages="default")
    quota = accounts(console)[dave]["quota"]
    assert quota["storage"] == 0 and quota["messages"] == 0  # the default class's: unlimited
    browser.get(console.url + "/audit")
    audit = browser.find_element(By.ID, "audit").text
    assert f"account limits {dave} limits of {dave}: class bulk" in audit
    assert f"account quota {dave} failed: messages many" in audit


def _total(browser: webdriver.Chrome, c: Console, key: str, rng: str = "24h") -> int:
    browser.get(c.url + f"/graphs?range={rng}")
    text = browser.find_element(By.ID, f"graph-{key}").find_element(By.CLASS_NAME, "total").text
    m = re.fullmatch(rf"total (\d+) in the last {rng}", text)
    assert m, text
    return int(m.group(1))


def _accepted_total(browser: webdriver.Chrome, c: Console) -> int:
    return _total(browser, c, "accepted")


def test_graph_counts_the_messages_sent(console: Console, browser: webdriver.Chrome) -> None:
    login(browser, console, console.admin, ADMIN_PASSWORD)

    def sampled() -> bool:
        browser.get(console.url + "/graphs")
        m = re.search(r"from: (.*) \(every minute", browser.find_element(By.ID, "sampled").text)
        return bool(m) and set(m.group(1).split(", ")) == {"access_metrics", "metrics"}

    wait_for("a sample from the relay and the access service", sampled)
    wait_for("an empty queue", lambda: not queue(console))  # nothing else settles while this test counts
    before = _accepted_total(browser, console)
    settled = {k: _total(browser, console, k) for k in ("delivered", "deferred", "bounced")}
    send(console, console.user, "graph", count=3)
    assert _accepted_total(browser, console) == before + 3
    wait_for("the three messages delivered", lambda: not queue(console))
    assert _total(browser, console, "delivered") == settled["delivered"] + 3
    # One deferred, then bounced: its mailbox is deleted before the retry (5.1.1); the DSN goes to bob.
    gone = f"gone@{console.box.domain}"
    qid = deferred_to(console, gone, "bounce")
    assert _total(browser, console, "deferred") == settled["deferred"] + 1
    console.box.cli("user", "del", gone)
    console.box.cli("queue", "retry", qid)
    wait_for("the bounce and its DSN settled", lambda: not queue(console))
    totals = {k: _total(browser, console, k) for k in ("delivered", "deferred", "bounced")}
    assert totals == {"delivered": settled["delivered"] + 4, "deferred": settled["deferred"] + 1,
                      "bounced": settled["bounced"] + 1}  # (the DSN to bob is the fourth delivery)
    for k, v in totals.items():
        assert _total(browser, console, k, "7d") == v
    accepted = before + 4  # (a DSN is generated, not accepted)
    assert _accepted_total(browser, console) == accepted
    svg = browser.find_element(By.ID, "graph-accepted").find_element(By.TAG_NAME, "svg")
    assert svg.get_attribute("aria-label").endswith(f"total {accepted}")
    screenshot(browser, "graphs")
    assert _total(browser, console, "accepted", "7d") == accepted


def test_customer_changes_password_and_gets_the_apple_profile(console: Console, browser: webdriver.Chrome) -> None:
    login(browser, console, console.user, USER_PASSWORD, "/account/login")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Your account {console.user}"
    screenshot(browser, "account")
    status, body, headers = console.request("GET", "/account/mobileconfig", session=session_cookie(browser))
    assert status == 200 and headers["Content-Type"] == "application/x-apple-aspen-config"
    profile = plistlib.loads(body)
    mail = profile["PayloadContent"][0]
    assert mail["PayloadType"] == "com.apple.mail.managed" and mail["EmailAddress"] == console.user
    assert mail["IncomingMailServerPortNumber"] in (console.box.port("imaps"), console.box.port("imap"))
    new = "a brand new password"
    form = browser.find_element(By.ID, "password-form")
    form.find_element(By.NAME, "current").send_keys(USER_PASSWORD)
    form.find_element(By.NAME, "new").send_keys(new)
    form.find_element(By.NAME, "again").send_keys(new)
    submit(browser, form.find_element(By.TAG_NAME, "button"))
    assert browser.find_element(By.ID, "flash").text == "Your password was changed."
    # (The old password is not tried here: each failure counts towards the limiter's lockout, tested last.)
    assert imap_login(console, console.user, new)


def test_curl_fetches_autoconfig_autodiscover_and_mta_sts(console: Console) -> None:
    curl = require_curl()
    base = [curl, "-sS", "--cacert", console.box.cfg.tls.cert, "-w", "\n%{http_code}"]

    def fetch(*args: str) -> tuple[str, str]:
        # Bytes: text mode would turn the policy's CRLF into LF.
        out = subprocess.run([*base, *args], capture_output=True, timeout=60, check=True).stdout.decode()
        body, _, code = out.rpartition("\n")
        return code, body

    code, xml = fetch(f"{console.url}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress={console.user}")
    assert code == "200", xml
    root = ET.fromstring(xml)  # Thunderbird's format: clientConfig 1.1 / emailProvider / incomingServer
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    imap = root.find("emailProvider/incomingServer[@type='imap']")
    assert imap is not None and imap.findtext("port") == str(console.box.port("imaps"))
    assert imap.findtext("socketType") == "SSL" and imap.findtext("username") == "%EMAILADDRESS%"
    code, _ = fetch(f"{console.url}/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=x@elsewhere.test")
    assert code == "400"
    request = ("<?xml version='1.0' encoding='utf-8'?><Autodiscover xmlns="
               "'http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006'><Request>"
               f"<EMailAddress>{console.user}</EMailAddress><AcceptableResponseSchema>"
               "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
               "</AcceptableResponseSchema></Request></Autodiscover>")
    code, xml = fetch("-X", "POST", "-H", "Content-Type: text/xml", "--data-binary", request,
                      f"{console.url}/Autodiscover/Autodiscover.xml")
    assert code == "200", xml
    ns = {"o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    proto = ET.fromstring(xml).find("o:Response/o:Account/o:Protocol[o:Type='IMAP']", ns)
    assert proto is not None and proto.findtext("o:Port", namespaces=ns) == str(console.box.port("imaps"))
    code, policy = fetch(f"{console.url}/.well-known/mta-sts.txt")
    assert code == "200" and policy.startswith("version: STSv1\r\n") and f"mx: {console.box.cfg.box.hostname}" in policy


def test_oversized_request_body_is_refused(console: Console) -> None:
    status, body, _ = console.request("POST", "/autodiscover/autodiscover.xml", b"<" * (64 * 1024 + 1),
                                      content_type="text/xml")
    assert status == 413 and b"larger than" in body


# Last in this module: it locks 127.0.0.1 out of logins to this box for the limiter's window.
def test_failed_logins_lock_out_through_the_one_limiter(console: Console, browser: webdriver.Chrome) -> None:
    limit = console.box.cfg.limits.auth_failures_per_ip
    for _ in range(limit + 1):
        login(browser, console, console.admin, "guessing")
        flash = browser.find_element(By.ID, "flash").text
        if flash.startswith("Login refused for now"):
            break
        assert flash == "Wrong login or password."
    else:
        raise AssertionError(f"still no lockout after {limit + 1} failed logins")
    assert "too many" in flash
    login(browser, console, console.admin, ADMIN_PASSWORD)  # the right password is refused too, for now
    assert browser.find_element(By.ID, "flash").text.startswith("Login refused for now")
    assert browser.get_cookie("console_session") is None
    # The same limiter as SMTP AUTH: the relay refuses this address's AUTH now as well.
    ctx = ssl.create_default_context(cafile=console.box.cfg.tls.cert)
    ctx.check_hostname = False
    with smtplib.SMTP(console.box.host("submission"), console.box.port("submission"), timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo()
        plain = base64.b64encode(f"\0{console.user}\0a brand new password".encode()).decode()
        code, text = s.docmd("AUTH", f"PLAIN {plain}")
        assert code == 421 and b"too many" in text, (code, text)
    assert "refused: 4" in audit_rows(console)
    # The relay's limiter names the console as the entry point of the refused logins.
    metrics = console.box.cfg.listeners.metrics
    with urllib.request.urlopen(f"http://{metrics.host}:{metrics.port}/metrics", timeout=30) as resp:
        families = text_string_to_metric_families(resp.read().decode())
        by_entry = {s.labels["entry"]: s.value for f in families for s in f.samples
                    if s.name == "relay_rate_limited_total"}
    assert by_entry.get("console", 0) >= 2, by_entry  # (before: counted as "imap")
