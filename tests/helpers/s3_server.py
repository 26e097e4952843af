"""A real S3-compatible server on 127.0.0.1 for the tests: moto's standalone server over HTTP.

MinIO is not installable from the registries this project builds from; moto's server speaks the
same S3 REST protocol over real HTTP, so s3fs, pyarrow's AWS SDK client and Lance's object_store all
talk to it exactly as they would to S3. IAM checking is switched on after setup: requests must be
signed with the access key of a real IAM user created on the server, and any other key is refused.

:class:`Proxy` sits between a client and the server to inject failures (a 503 SlowDown for every
n-th request, the way S3 sheds load) and to count requests per object.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}
REGION = "us-east-1"


class S3Server:
    """moto on 127.0.0.1 with one IAM user allowed ``s3:*``; ``key``/``secret`` are its credentials."""

    def __init__(self):
        import boto3
        import requests
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        setup = dict(
            endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
        )
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="embedpipe")
        policy = iam.create_policy(
            PolicyName="s3-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        iam.attach_user_policy(UserName="embedpipe", PolicyArn=policy["Policy"]["Arn"])
        access = iam.create_access_key(UserName="embedpipe")["AccessKey"]
        self.key, self.secret = access["AccessKeyId"], access["SecretAccessKey"]
        # From here on every request is authenticated and authorised against IAM.
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def filesystem(self, endpoint: Optional[str] = None):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": endpoint or self.endpoint, "region_name": REGION},
        )

    def env(self, endpoint: Optional[str] = None) -> dict[str, str]:
        """The standard AWS variables that point a job at this server (and nowhere else)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }

    def stop(self):
        self._server.stop()


class Proxy:
    """HTTP proxy to ``127.0.0.1:target_port``; answers 503 SlowDown to every ``fail_every``-th request.

    Requests are forwarded unchanged (Host header included, so signatures stay valid); ``requests``
    counts them by ``(method, path)`` and ``failed`` counts the injected failures.
    """

    def __init__(self, target_port: int, fail_every: Optional[int] = None):
        self.target_port = target_port
        self.fail_every = fail_every
        self.total = 0
        self.failed = 0
        self.requests: Counter = Counter()
        self.failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _count(self, method: str, path: str) -> bool:
        with self._lock:
            self.total += 1
            self.requests[(method, path.split("?", 1)[0])] += 1
            fail = bool(self.fail_every) and self.total % self.fail_every == 0
            if fail:
                self.failed += 1
                self.failures.append((method, path))
            return fail

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real clients expect

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status: int, reason: str, headers: list, body: bytes, length: Optional[str] = None):
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP and name.lower() not in ("server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length if length is not None else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self):
                body = self._body()  # read it even when failing, so the connection stays usable
                if proxy._count(self.command, self.path):
                    error = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>"
                    )
                    self._reply(503, "Slow Down", [("Content-Type", "application/xml")], error)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP_BY_HOP:
                            upstream.putheader(name, value)
                    if body or self.command in ("PUT", "POST"):
                        upstream.putheader("Content-Length", str(len(body)))
                    upstream.endheaders(body or None)
                    response = upstream.getresponse()
                    data = response.read()
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self._reply(response.status, response.reason, response.getheaders(), data, length or None)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
