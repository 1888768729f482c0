"""`mode-edge serve` over real HTTP on localhost, and expert offload's placement."""

from __future__ import annotations

import base64
import json
import socket
import struct
import subprocess
import sys
import time
import zlib

import httpx
import pytest
from gguf import GGUFReader

from tests.helpers import ANSWER, PICTURE, QUESTION, cli

pytestmark = pytest.mark.runtime  # loads models / runs ops of the patched llama.cpp

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a 'decompression bomb' by size, a few bytes long)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _messages(data: bytes, text: str = QUESTION) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


@pytest.fixture(scope="module")
def server(demo_out, tmp_path_factory):
    port = _free_port()
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "shapes.png").write_bytes(PICTURE.read_bytes())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mode_edge.cli",
            "serve",
            str(demo_out),
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--threads",
            "2",
            "--allow-images",
            str(allowed),
            "--max-image-pixels",
            str(2048 * 2048),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail("serve exited: " + proc.stdout.read()[-2000:])
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("serve did not come up in 120 s")
        yield url, allowed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _post(url: str, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_chat_completion_with_the_bundled_picture(server):
    url, _ = server
    r = _post(url, {"messages": _messages(PICTURE.read_bytes()), "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip() == ANSWER
    models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert len(models["data"]) == 1 and models["data"][0]["id"].startswith("demo-model-")


def test_streaming_gives_the_same_answer(server):
    url, _ = server
    body = {"messages": _messages(PICTURE.read_bytes()), "max_tokens": 8, "temperature": 0, "stream": True}
    pieces = []
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    assert len(pieces) > 1 and "".join(pieces).strip() == ANSWER


def test_file_urls_only_from_allowed_folders(server, tmp_path):
    url, allowed = server
    ok = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": (allowed / "shapes.png").as_uri()}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        "max_tokens": 8,
        "temperature": 0,
    }
    r = _post(url, ok)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip() == ANSWER
    outside = tmp_path / "x.png"
    outside.write_bytes(PICTURE.read_bytes())
    ok["messages"][0]["content"][0]["image_url"]["url"] = outside.as_uri()
    assert _post(url, ok).status_code == 403
    ok["messages"][0]["content"][0]["image_url"]["url"] = "https://example.com/x.png"
    r = _post(url, ok)
    assert r.status_code == 400 and "not fetched" in r.json()["error"]["message"]


def test_refusals_and_the_server_keeps_serving(server):
    url, _ = server
    body = {"messages": _messages(PICTURE.read_bytes()), "max_tokens": 8, "temperature": 0}
    assert _post(url, body, key=None).status_code == 401
    assert _post(url, body, key="wrong").status_code == 401
    r = _post(url, {"messages": _messages(_png_header(30000, 30000)), "max_tokens": 4})
    assert r.status_code == 413 and "pixels" in r.json()["error"]["message"]
    r = _post(
        url, {"messages": _messages(_png_header(4000, 3000)), "max_tokens": 4}
    )  # above --max-image-pixels
    assert r.status_code == 413 and "4000x3000" in r.json()["error"]["message"]
    r = _post(url, {"messages": _messages(b"not an image at all"), "max_tokens": 4})
    assert r.status_code == 400
    big = {"messages": [{"role": "user", "content": "x" * (33 * 2**20)}]}
    assert _post(url, big).status_code == 413
    r = _post(url, body)  # still serving, same answer
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip() == ANSWER


def _expert_tensors(text_gguf) -> set[str]:
    return {t.name for t in GGUFReader(text_gguf).tensors if "_exps" in t.name and t.name.endswith(".weight")}


def test_expert_offload_places_every_group_of_the_chosen_layers(demo_out):
    import llama_cpp

    from mode_edge.run.offload import placement

    text = next(p for p in demo_out.glob("*.gguf") if not p.name.startswith(("mmproj-", "plan")))
    experts = _expert_tensors(text)
    assert any(".g1." in n for n in experts)  # an expert-group file: groups must follow their layer
    for kw, layers in (({"cpu_moe": True}, {0, 1, 2, 3}), ({"n_cpu_moe": 2}, {0, 1})):
        with placement(**kw) as where:
            llm = llama_cpp.Llama(str(text), n_ctx=128, verbose=False)
        llm.close()
        want = {n for n in experts if int(n.split(".")[1]) in layers}
        assert set(where.tensors) == want, kw
        assert all(b.startswith("CPU") for b in where.tensors.values())
    with placement() as where:
        llm = llama_cpp.Llama(str(text), n_ctx=128, verbose=False)
    llm.close()
    assert where.tensors == {}


def test_chat_cpu_moe_reports_the_placement(demo_out, capsys):
    assert (
        cli(
            [
                "chat",
                str(demo_out),
                "--image",
                str(PICTURE),
                "--prompt",
                QUESTION,
                "--max-tokens",
                "8",
                "--n-cpu-moe",
                "2",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "of 2 MoE layers (0, 1) in host memory" in captured.out + captured.err
    assert captured.out.strip().endswith(ANSWER)
    assert cli(["chat", str(demo_out), "--cpu-moe", "--n-cpu-moe", "1", "--prompt", "hi"]) == 2
