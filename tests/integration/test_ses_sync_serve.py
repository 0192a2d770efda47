"""`suppression.ses_sync_interval`: a serving relay pulls the SES account list into its own."""

from __future__ import annotations

import smtplib
import time

from testkit.fake_ses import FakeSES


def test_serving_relay_pulls_the_ses_account_list(relay_factory):
    with FakeSES(suppression_rate=1.0) as fake:
        fake.suppressed["listed@example.org"] = ("BOUNCE", time.time())
        relay = relay_factory(fake.endpoint_url, suppression={"ses_sync_interval": 60})
        deadline = time.monotonic() + 15
        while relay.metric("ses_relay_ses_sync_last_success_timestamp_seconds") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.metric("ses_relay_ses_sync_last_entries") == 1
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo()
            client.mail("alice@example.com")
            code, reply = client.rcpt("listed@example.org")
        assert (code, reply[:5]) == (550, b"5.1.1")
        assert relay.call(relay.store.get("listed@example.org")).source == "ses-sync"
