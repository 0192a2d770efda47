"""The web console over HTTP on a real relay: off by default, behind http.admin_allowed_networks,
pages that show what the relay did (messages, timeline, queue, suppression list), hostile text
escaped, no script allowed by the Content-Security-Policy. The browser test is test_console_browser."""

from __future__ import annotations

import re
import smtplib
import urllib.error
import urllib.parse
import urllib.request

from relay.suppression.base import Reason, SuppressionEntry
from testkit.fake_ses import Fault
from testkit.messages import plain_message
from testkit.waiting import wait_until

HOSTILE_SUBJECT = "<script>alert(1)</script> invoice"


def fetch(relay, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(relay.http_url + path, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read().decode()


def send(relay, recipient: str, subject: str = "Invoice 42") -> tuple[int, bytes]:
    """The DATA reply."""
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt(recipient)[0] == 250
        return client.data(plain_message(to=recipient, subject=subject))


def test_console_is_off_by_default(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url)
    assert fetch(relay, "/console")[0] == 404
    assert fetch(relay, "/api/messages?q=x")[0] == 200  # the JSON API is on with the trace


def test_outside_admin_networks_console_and_api_are_refused_metrics_still_served(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url,
                          http={"listen": "127.0.0.1:0", "console": True, "admin_allowed_networks": ["10.0.0.0/8"]})
    for path in ("/console", "/console/messages", "/console/style.css", "/api/messages?q=x", "/api/messages/q1"):
        status, _, body = fetch(relay, path)
        assert status == 403 and "admin_allowed_networks" in body, path
    assert fetch(relay, "/metrics")[0] == 200 and fetch(relay, "/healthz")[0] == 200


def test_messages_search_and_timeline_escape_hostile_text(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, http={"listen": "127.0.0.1:0", "console": True})
    send(relay, "jane@example.org", subject=HOSTILE_SUBJECT)
    send(relay, "other@example.net")
    wait_until(lambda: "jane@example.org" in fetch(relay, "/console/messages")[2], timeout=10,
               message="the message reached the console's recent list")

    status, headers, html = fetch(relay, "/console/messages?q=" + urllib.parse.quote("jane@example.org"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"] and "script-src" not in headers[
        "Content-Security-Policy"]
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; invoice" in html
    assert "other@example.net" not in html  # the search narrowed it down
    [queue_id] = set(re.findall(r'href="/console/messages/([^"]+)"', html))

    status, _, page = fetch(relay, f"/console/messages/{queue_id}")
    assert status == 200 and 'data-step="accepted"' in page and fake_ses.message_ids[0] in page
    assert fetch(relay, "/console/messages/no-such-id")[0] == 404
    status, _, overview = fetch(relay, "/console")
    assert status == 200 and '<svg class="chart"' in overview and ">2</div>" in overview  # 2 recipients sent


def test_queue_page_lists_deferred_mail_and_rejects_unknown_states(fake_ses, relay_factory):
    fake_ses.queue(Fault.error("InternalFailure", status=500))
    relay = relay_factory(fake_ses.endpoint_url, http={"listen": "127.0.0.1:0", "console": True},
                          delivery={"mode": "spool"})
    code, reply = send(relay, "carol@example.org")
    assert code == 250 and b"queued as" in reply
    wait_until(lambda: "carol@example.org" in fetch(relay, "/console/queue?state=deferred")[2], timeout=15,
               message="the deferred message is listed")
    status, _, html = fetch(relay, "/console/queue?state=deferred")
    assert status == 200 and "451 4.4.1" in html and "deferred (1)" in html and re.search(r"<td>in \d+[sm]</td>", html)
    assert fetch(relay, "/console/queue?state=nonsense")[0] == 400


def test_suppression_page_finds_by_address_and_by_part(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, http={"listen": "127.0.0.1:0", "console": True})
    relay.call(relay.store.put(SuppressionEntry("Bounced@Example.org", Reason.BOUNCE, source="sqs",
                                                detail="Permanent/General")))
    relay.call(relay.store.put(SuppressionEntry("angry@example.net", Reason.COMPLAINT, source="sns")))
    _, _, by_address = fetch(relay, "/console/suppression?q=bounced@example.org")
    assert "Bounced@Example.org" in by_address and "angry@example.net" not in by_address
    assert "Permanent/General" in by_address and ">sqs<" in by_address
    _, _, by_part = fetch(relay, "/console/suppression?q=example.net")
    assert "angry@example.net" in by_part and "COMPLAINT" in by_part and "Bounced@" not in by_part
    _, _, everything = fetch(relay, "/console/suppression")
    assert "2 entries" in everything
