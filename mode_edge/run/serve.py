"""`mode-edge serve`: the converted model behind an OpenAI-compatible HTTP API.

The app is llama-cpp-python's own server (FastAPI: /v1/chat/completions with streaming,
/v1/models, --api-key as a bearer token) with its multimodal (mtmd) chat handler, our files and
the model's chat template, plus /health and a guard in front of it:

- request bodies above --max-request-mb are refused with 413;
- images must be data: URLs, or file: URLs under a folder given with --allow-images; remote
  URLs are refused (400: the server never fetches on a client's behalf);
- an image that is not one, or has more than --max-image-pixels pixels, is refused (400/413)
  from its header, before any pixel is decoded;
- with --api-key, the guard checks the bearer token before it reads a body (401).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from mode_edge.errors import UserError

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Limits:
    max_request_bytes: int = 32 * 2**20
    max_image_pixels: int = 4096 * 4096
    allow_dirs: list[Path] = field(default_factory=list)


class Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _image_bytes(url: str, limits: Limits) -> bytes:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head:
            raise Refusal(400, "a data: image URL must be base64-encoded")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, "the data: image URL is not valid base64") from None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(d) for d in limits.allow_dirs):
            raise Refusal(
                403, f"file URLs are only served from folders given with --allow-images; {path} is not in one"
            )
        try:
            return path.read_bytes()
        except OSError as e:
            raise Refusal(400, f"cannot read image {path} ({e.__class__.__name__})") from None
    raise Refusal(
        400,
        f"image URLs with scheme {parsed.scheme or '(none)'!r} are not fetched; "
        "send the image as a data: URL",
    )


def check_image(url: str, limits: Limits) -> bytes:
    """The image's bytes, once its header passed the checks."""
    from PIL import Image, UnidentifiedImageError

    data = _image_bytes(url, limits)
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only: no pixel is decoded here
            w, h = im.size
    except Image.DecompressionBombError as e:  # PIL's own guard, above 2x its pixel limit
        raise Refusal(
            413, f"an image is far above the limit of {limits.max_image_pixels:,} pixels ({e})"
        ) from None
    except (UnidentifiedImageError, OSError):
        raise Refusal(400, "an image in the request is not a readable PNG, JPEG, WebP or GIF") from None
    if w * h > limits.max_image_pixels:
        raise Refusal(
            413,
            f"an image is {w}x{h} pixels, above the limit of {limits.max_image_pixels:,} "
            "(--max-image-pixels)",
        )
    return data


def check_chat_body(body: bytes, limits: Limits) -> bytes:
    """Validate every image of a chat request; file: URLs become data: URLs (so the chat handler
    never opens a path itself). Returns the body to pass on."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body  # not JSON: the app answers 422 itself
    changed = False
    messages = req.get("messages") if isinstance(req, dict) else None
    for msg in messages if isinstance(messages, list) else []:
        content = msg.get("content") if isinstance(msg, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise Refusal(400, "image_url needs a url")
            data = check_image(url, limits)
            if url.startswith("file:"):
                part["image_url"] = {"url": "data:image/png;base64," + base64.b64encode(data).decode()}
                changed = True
    return json.dumps(req).encode() if changed else body


class Guard:
    """ASGI middleware: size, image and key checks in front of llama-cpp-python's app."""

    def __init__(self, app, limits: Limits, api_key: str | None):
        self.app, self.limits, self.api_key = app, limits, api_key

    async def _refuse(self, send, status: int, message: str) -> None:
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if (
            self.api_key is not None
            and headers.get(b"authorization", b"").decode() != f"Bearer {self.api_key}"
        ):
            return await self._refuse(send, 401, "invalid or missing API key (Authorization: Bearer KEY)")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_request_bytes:
            return await self._refuse(
                send, 413, f"request body above {self.limits.max_request_bytes:,} bytes"
            )
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limits.max_request_bytes:
                return await self._refuse(
                    send, 413, f"request body above {self.limits.max_request_bytes:,} bytes"
                )
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        if scope.get("path") == CHAT_PATH:
            try:
                body = check_chat_body(body, self.limits)
            except Refusal as r:
                return await self._refuse(send, r.status, r.message)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            **scope,
            "headers": [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            + [(b"content-length", str(len(body)).encode())],
        }
        return await self.app(scope, replay, send)


def build_app(
    text_path: Path,
    mmproj_path: Path,
    *,
    n_ctx: int,
    n_gpu_layers: int = 0,
    threads: int | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    cpu_moe: bool = False,
    n_cpu_moe: int | None = None,
    verbose: bool = False,
):
    """(ASGI app, expert placement) for one converted model."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from mode_edge.run.offload import placement

    if not verbose:
        from mode_edge.run.mtmd import quiet_mtmd_logs

        quiet_mtmd_logs()
    model = ModelSettings(
        model=str(text_path),
        model_alias=text_path.stem,
        chat_format="mtmd",
        clip_model_path=str(mmproj_path),
        n_ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        verbose=verbose,
        **({"n_threads": threads, "n_threads_batch": threads} if threads else {}),
    )
    server = ServerSettings(api_key=api_key)
    try:
        with placement(cpu_moe, n_cpu_moe) as where:
            app = create_app(server_settings=server, model_settings=[model])  # loads the model
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"llama.cpp could not load {text_path.name} ({e})",
            "rerun with --verbose to see llama.cpp's reason",
        ) from None

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok", "model": text_path.stem}

    return Guard(app, limits or Limits(), api_key), where
