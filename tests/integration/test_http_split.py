"""http.public_listen: the internet-facing listener serves /sns and /healthz only; /metrics, /readyz
and /api/ stay on http.listen, which no longer serves /sns."""

from __future__ import annotations

import urllib.error
import urllib.request

from testkit.serve import http_get

SNS = {"sns": {"enabled": True, "topic_arns": ["arn:aws:sns:us-east-1:123456789012:ses-feedback"]}}


def post(url: str, body: bytes = b"{}") -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "text/plain; charset=UTF-8"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_public_listener_serves_only_sns_and_healthz(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, http={"public_listen": "127.0.0.1:0"}, feedback=SNS)
    host, port = relay.relay.http_public_address
    public, private = f"http://{host}:{port}", relay.http_url
    for path in ("/metrics", "/readyz", "/api/messages", "/api/messages?q=bob@example.org"):
        assert http_get(public + path)[0] == 404, path
    assert http_get(public + "/healthz")[0] == 200
    assert post(public + "/sns") == 403  # reaches the SNS handler, which refuses junk
    assert relay.metric("ses_relay_sns_messages_rejected_total", {"reason": "malformed"}) == 1
    # The private listener keeps everything else, and /sns is gone from it.
    assert http_get(private + "/metrics")[0] == 200
    assert http_get(private + "/readyz")[0] == 200
    assert http_get(private + "/healthz")[0] == 200
    assert http_get(private + "/api/messages?q=bob@example.org")[0] == 200
    assert post(private + "/sns") == 404


def test_without_public_listen_sns_stays_on_http_listen(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, feedback=SNS)
    assert relay.relay.http_public_address is None
    assert post(relay.http_url + "/sns") == 403
    assert http_get(relay.http_url + "/metrics")[0] == 200


def test_public_listen_alone_is_enough_for_sns(fake_ses, relay_factory):
    relay = relay_factory(fake_ses.endpoint_url, http={"listen": None, "public_listen": "127.0.0.1:0"},
                          feedback=SNS)
    host, port = relay.relay.http_public_address
    assert relay.relay.http_address is None
    assert post(f"http://{host}:{port}/sns") == 403
    assert http_get(f"http://{host}:{port}/metrics")[0] == 404
