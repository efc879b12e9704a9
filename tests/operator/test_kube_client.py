"""The operator's apiserver client against a loopback HTTP server that answers like the
apiserver's flow control: 429 Too Many Requests with a Retry-After."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from pimlab_operator import kube


class Throttling(BaseHTTPRequestHandler):
    """429 (Retry-After: 0) for the first `server.throttle` requests, then 200."""

    def _answer(self) -> None:
        self.server.seen.append(self.command)
        if len(self.server.seen) <= self.server.throttle:
            body, status = json.dumps({"kind": "Status", "reason": "TooManyRequests"}).encode(), 429
        else:
            body, status = json.dumps({"kind": "Shard", "metadata": {"name": "shard-00"}}).encode(), 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = _answer

    def log_message(self, *_):
        pass


@pytest.fixture
def apiserver(tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    server.seen, server.throttle = [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
              "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
              "users": [{"name": "u", "user": {"token": "t"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    kube.connect(None)
    yield server
    kube.connect(None)
    server.shutdown()


def test_a_throttled_request_is_sent_again_after_retry_after(apiserver):
    apiserver.throttle = 3
    answer = kube.request("PATCH", "/apis/pim-sre.lab/v1alpha1/namespaces/a/shards/shard-00/status",
                          body={"status": {}}, content_type="application/apply-patch+yaml")
    assert answer["metadata"]["name"] == "shard-00"
    assert apiserver.seen == ["PATCH"] * 4


def test_throttled_for_good_is_an_api_error_with_the_status(apiserver, monkeypatch):
    monkeypatch.setattr(kube, "THROTTLED_RETRIES", 2)  # the pool is made on the first request
    apiserver.throttle = 1000
    with pytest.raises(kube.ApiError) as raised:
        kube.request("GET", "/apis/pim-sre.lab/v1alpha1/namespaces/a/shards/shard-00")
    assert raised.value.status == 429 and "TooManyRequests" in raised.value.body
    assert len(apiserver.seen) == kube.THROTTLED_RETRIES + 1


class PodLog(BaseHTTPRequestHandler):
    """A pod's log as the apiserver serves it: text/plain lines, from `sinceTime` on."""

    def do_GET(self):
        self.server.seen.append(self.path)
        body = b'{"trace_id": "abc", "message": "request"}\nplain line\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def test_pod_log_is_text_from_since_time(apiserver, tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), PodLog)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{server.server_port}"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    kube.connect(None)
    try:
        text = kube.pod_log("pim-gateway-1", "lab", "2026-12-08T01:00:00Z")
    finally:
        server.shutdown()
    assert text.splitlines() == ['{"trace_id": "abc", "message": "request"}', "plain line"]
    assert server.seen == ["/api/v1/namespaces/lab/pods/pim-gateway-1/log?sinceTime=2026-12-08T01%3A00%3A00Z"]
