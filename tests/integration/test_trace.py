"""Message trace end to end: mail through the relay into moto, SES events back through SQS and the
signed SNS webhook, then `ses-relay trace` (a subprocess) and /api/messages show each message's
timeline, found by its queue id, Message-ID, SES message id and recipient."""

from __future__ import annotations

import json
import smtplib
import urllib.parse
from pathlib import Path

import boto3
import pytest
import yaml

from testkit.messages import plain_message
from testkit.serve import http_get, relay_env, run_cli
from testkit.sns_signer import TOPIC_ARN, FakeSns
from testkit.waiting import wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ses"
MESSAGE_ID = "<trace-1@client.test>"


def ses_event(name: str, ses_id: str, **changes) -> dict:
    event = json.loads((FIXTURES / name).read_text())
    event["mail"]["messageId"] = ses_id
    for key, value in changes.items():
        event[key].update(value)
    return event


def send(relay, recipients: list[str], message_id: str = MESSAGE_ID, subject: str = "Invoice 42") -> tuple:
    data = plain_message(to=", ".join(recipients), subject=subject,
                         headers=[b"Message-ID: " + message_id.encode()])
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("alice@example.com")
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        return client.data(data)


def api(relay, path: str) -> tuple[int, dict]:
    status, body = http_get(relay.http_url + path)
    return status, json.loads(body)


def api_search(relay, text: str) -> list[dict]:
    status, body = api(relay, "/api/messages?q=" + urllib.parse.quote(text))
    assert status == 200, body
    return body["messages"]


def cli_trace(tmp_path: Path, relay, *args: str):
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(relay.config.resolved_state_dir)}))
    return run_cli(["trace", *args, "--config", str(config)], relay_env(tmp_path))


def post_sns(relay, message: dict) -> int:
    import urllib.request

    request = urllib.request.Request(relay.http_url + "/sns", data=json.dumps(message).encode(), method="POST",
                                     headers={"x-amz-sns-message-type": message["Type"]})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.fixture
def feedback_relay(moto, relay_factory):
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    queue_url = sqs.create_queue(QueueName="trace-feedback")["QueueUrl"]
    fake_sns = FakeSns()

    def start(**overrides):
        relay = relay_factory(
            moto.endpoint_url, relay_kwargs={"sns_http_get": fake_sns.http_get},
            feedback={"sns": {"enabled": True, "topic_arns": [TOPIC_ARN]},
                      "sqs": {"queue_url": queue_url, "endpoint_url": moto.endpoint_url, "wait_time": 1}},
            **overrides)
        return relay, sqs, queue_url, fake_sns

    return start


def test_direct_send_bounce_by_sqs_delivery_by_sns_found_by_every_query(feedback_relay, tmp_path):
    relay, sqs, queue_url, fake_sns = feedback_relay()
    code, reply = send(relay, ["jane@example.org", "Bob@Example.org"])
    assert code == 250
    wait_until(lambda: api_search(relay, MESSAGE_ID), message="the message reached the trace")
    [message] = api_search(relay, MESSAGE_ID)
    queue_id, ses_id = message["queue_id"], message["ses_message_ids"][0]["ses_message_id"]
    assert ses_id in reply.decode() and message["subject"] == "Invoice 42"
    assert message["steps"][0]["step"] == "accepted" and message["steps"][0]["smtp_reply"].startswith("250")

    bounce = ses_event("bounce_permanent_notification.json", ses_id, bounce={"bouncedRecipients": [
        {"emailAddress": "jane@example.org", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 unknown"}]})
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(fake_sns.notification(bounce)))
    delivery = ses_event("delivery_notification.json", ses_id, delivery={"recipients": ["bob@example.org"]})
    assert post_sns(relay, fake_sns.notification(delivery)) == 200
    # An event for a message this relay never sent (another system on the same configuration set).
    assert post_sns(relay, fake_sns.notification(ses_event("delivery_notification.json", "not-ours"))) == 200

    def steps() -> list[str]:
        status, body = api(relay, f"/api/messages/{queue_id}")
        assert status == 200
        return [step["step"] for step in body["steps"]]

    wait_until(lambda: sorted(steps()) == ["Bounce", "Delivery", "accepted"], timeout=20,
               message="both SES events joined to the message")
    status, body = api(relay, f"/api/messages/{queue_id}")
    assert body["state"] == "bounced" and sorted(body["recipients"]) == ["Bob@Example.org", "jane@example.org"]
    bounce_step = next(step for step in body["steps"] if step["step"] == "Bounce")
    assert (bounce_step["source"], bounce_step["recipients"]) == ("sqs", ["jane@example.org"])
    assert "550 5.1.1" in bounce_step["detail"]
    assert api(relay, "/api/messages/nope")[0] == 404
    assert api(relay, "/api/messages")[0] == 400

    for query in (queue_id, MESSAGE_ID, MESSAGE_ID.strip("<>"), ses_id, "bob@example.org", "JANE@example.org"):
        result = cli_trace(tmp_path, relay, query, "--json")
        assert result.returncode == 0, (query, result.stderr)
        [found] = json.loads(result.stdout)["messages"]
        assert found["queue_id"] == queue_id, query
        assert sorted(step["step"] for step in found["steps"]) == ["Bounce", "Delivery", "accepted"], query
        assert [m["queue_id"] for m in api_search(relay, query)] == [queue_id], query

    text = cli_trace(tmp_path, relay, "jane@example.org", "--since", "1h")
    assert text.returncode == 0, text.stderr
    assert queue_id in text.stdout and "Bounce" in text.stdout and "Permanent/General" in text.stdout
    missing = cli_trace(tmp_path, relay, "nobody@example.org")
    assert missing.returncode == 1 and "no message" in missing.stderr

    unknown = json.loads(cli_trace(tmp_path, relay, "not-ours", "--json").stdout)["messages"]
    assert unknown[0]["known"] is False and unknown[0]["steps"][0]["step"] == "Delivery"
    assert relay.metric("ses_relay_trace_events_unmatched_total") == 1
    assert relay.metric("ses_relay_trace_store_bytes") > 0


def test_complaint_by_signed_sns_and_by_sqs_shows_once_and_makes_the_message_complained(feedback_relay, tmp_path):
    relay, sqs, queue_url, fake_sns = feedback_relay()
    code, _ = send(relay, ["angry@example.org"], message_id="<complaint-1@client.test>")
    assert code == 250
    wait_until(lambda: api_search(relay, "<complaint-1@client.test>"), message="the message reached the trace")
    [message] = api_search(relay, "<complaint-1@client.test>")
    ses_id = message["ses_message_ids"][0]["ses_message_id"]

    complaint = ses_event("complaint_notification.json", ses_id)
    notification = fake_sns.notification(complaint)
    assert post_sns(relay, notification) == 200
    # The same event again through SQS (one topic feeding both): one step, not two.
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(fake_sns.notification(complaint)))
    wait_until(lambda: relay.metric("ses_relay_feedback_events_total", {"type": "Complaint", "subtype": "abuse", "source": "sqs"})
               >= 1, timeout=20, message="the SQS copy of the complaint was read")
    wait_until(lambda: any(step["step"] == "Complaint" for step in api_search(relay, ses_id)[0]["steps"]),
               timeout=10, message="the complaint reached the trace")
    relay.call(relay.relay._trace.flush())  # the SQS copy, read after it, is written too

    result = cli_trace(tmp_path, relay, "angry@example.org", "--json")
    assert result.returncode == 0, result.stderr
    [found] = json.loads(result.stdout)["messages"]
    complaints = [step for step in found["steps"] if step["step"] == "Complaint"]
    assert len(complaints) == 1 and complaints[0]["source"] == "sns"
    assert complaints[0]["subtype"] == "abuse" and complaints[0]["recipients"] == ["angry@example.org"]
    assert found["state"] == "complained"


def test_spooled_message_shows_queued_attempt_and_ses_id(feedback_relay, tmp_path):
    relay, *_ = feedback_relay(delivery={"mode": "spool"})
    code, reply = send(relay, ["carol@example.org"], message_id="<spooled@client.test>")
    assert code == 250 and b"queued as" in reply

    def timeline() -> dict:
        found = api_search(relay, "carol@example.org")
        return found[0] if found else {}

    wait_until(lambda: any(step["step"] == "attempt" for step in timeline().get("steps", [])), timeout=20,
               message="the delivery attempt reached the trace")
    message = timeline()
    assert message["steps"][0]["outcome"] == "queued"
    attempt = next(step for step in message["steps"] if step["step"] == "attempt")
    assert attempt["result"] == "sent" and attempt["chunk"] == 0
    assert message["ses_message_ids"] == [{"ses_message_id": attempt["ses_message_id"], "chunk": 0}]
    assert message["state"] == "sent"
    [by_ses_id] = api_search(relay, attempt["ses_message_id"])
    assert by_ses_id["queue_id"] == message["queue_id"]


def test_trace_off_means_no_store_and_no_api(moto, relay_factory, tmp_path):
    relay = relay_factory(moto.endpoint_url, trace={"enabled": False})
    assert send(relay, ["bob@example.org"])[0] == 250
    status, _ = http_get(relay.http_url + "/api/messages?q=bob@example.org")
    assert status == 404
    assert not (relay.config.resolved_state_dir / "trace.db").exists()
