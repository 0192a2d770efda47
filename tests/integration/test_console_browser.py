"""The web console end to end in headless Chromium: mail sent through the relay into moto, its bounce
delivered back through SQS; in the browser the search finds the message and its timeline shows the
bounce from SQS. Screenshots are saved as test artifacts (test-artifacts/, or $SES_RELAY_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import boto3

from testkit.browser import chromium, save_screenshot
from testkit.messages import plain_message
from testkit.serve import http_get
from testkit.waiting import wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ses"
RECIPIENT = "jane@example.org"
# Would retitle the page if it ever ran: escaping and the CSP must both stop it.
SUBJECT = "<script>document.title='pwned'</script>Order 7"


def sqs_bounce(ses_id: str) -> str:
    event = json.loads((FIXTURES / "bounce_permanent_notification.json").read_text())
    event["mail"]["messageId"] = ses_id
    event["bounce"]["bouncedRecipients"] = [
        {"emailAddress": RECIPIENT, "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
    return json.dumps(event)  # raw message delivery: the SES event itself is the SQS body


def test_search_finds_the_message_and_its_timeline_shows_the_sqs_bounce(moto, relay_factory, tmp_path):
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    queue_url = sqs.create_queue(QueueName="console-feedback")["QueueUrl"]
    relay = relay_factory(moto.endpoint_url, http={"listen": "127.0.0.1:0", "console": True},
                          feedback={"sqs": {"queue_url": queue_url, "endpoint_url": moto.endpoint_url,
                                            "wait_time": 1}})
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.sendmail("alice@example.com", [RECIPIENT, "bob@example.org"],
                        plain_message(to=RECIPIENT, subject=SUBJECT,
                                      headers=[b"Message-ID: <console-1@client.test>"]))

    def traced() -> list[dict]:
        return json.loads(http_get(relay.http_url + "/api/messages?q=" + RECIPIENT)[1])["messages"]

    wait_until(traced, timeout=10, message="the message reached the trace")
    [message] = traced()
    ses_id = message["ses_message_ids"][0]["ses_message_id"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=sqs_bounce(ses_id))
    wait_until(lambda: any(s["step"] == "Bounce" for s in traced()[0]["steps"]), timeout=20,
               message="the SQS bounce joined the message")

    from selenium.webdriver.common.by import By

    with chromium(tmp_path / "chromium-profile") as browser:
        browser.get(relay.http_url + "/console")
        assert "Overview" in browser.title
        box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
        box.send_keys(RECIPIENT)
        box.submit()
        wait_until(lambda: "Messages matching" in browser.title, timeout=10, message="the search page loaded")
        rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 1 and RECIPIENT in rows[0].text and "Order 7" in rows[0].text
        assert "<script>" in rows[0].text  # shown as text: escaped, not run
        assert "bounced" in rows[0].text
        save_screenshot(browser, "console-search.png")

        rows[0].find_element(By.PARTIAL_LINK_TEXT, message["queue_id"]).click()
        wait_until(lambda: message["queue_id"] in browser.title, timeout=10, message="the message page loaded")
        assert browser.title != "pwned" and "pwned" not in browser.title
        steps = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
        names = [step.get_attribute("data-step") for step in steps]
        assert names[0] == "accepted" and "Bounce" in names
        bounce = steps[names.index("Bounce")].text
        assert "sqs" in bounce and RECIPIENT in bounce and "550 5.1.1" in bounce
        state = browser.find_element(By.CSS_SELECTOR, "table.pairs .badge").text
        assert state == "bounced"
        shot = save_screenshot(browser, "console-timeline.png")
        assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas

        # The overview: 2 recipients sent, 1 bounced: 50 %, far over the level where SES may pause.
        browser.find_element(By.LINK_TEXT, "Overview").click()
        wait_until(lambda: "Overview" in browser.title, timeout=10, message="the overview loaded")
        card = browser.find_element(By.CSS_SELECTOR, "[data-rate=bounce]")
        assert "50.00 %" in card.text and "bad" in card.get_attribute("class")
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bounced")) == 24
        save_screenshot(browser, "console-overview.png")
