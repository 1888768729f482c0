"""`mode-edge serve`: an OpenAI-compatible HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app, console
from mode_edge.cli.common import CPU_MOE_HELP, N_CPU_MOE_HELP, check_offload
from mode_edge.errors import UserError

SERVE_EPILOG = """Examples:

  mode-edge serve out/                                   (http://127.0.0.1:8080/v1, OpenAI-compatible)

  mode-edge serve out/ --api-key s3cret --cpu-moe -ngl -1   (experts in host memory, the rest on the GPU)

  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages":
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
    {"type": "text", "text": "What is in the picture?"}]}]}'

Images are data: URLs, or file: URLs under a folder given with --allow-images; remote URLs are
not fetched. Requests run one at a time (llama-cpp-python's server holds one context); others wait.
"""


@app.command(epilog=SERVE_EPILOG)
def serve(
    model: Path = typer.Argument(..., help="A folder written by `mode-edge convert`, or a text GGUF."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Listen address (0.0.0.0 exposes it to the network)."
    ),
    port: int = typer.Option(8080, "--port", help="Listen port."),
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="Vision projector (default: found beside MODEL)."
    ),
    ctx: int = typer.Option(0, "--ctx", help="Context length in tokens (0: the model's, at most 4096)."),
    n_gpu_layers: int = typer.Option(
        0, "--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all)."
    ),
    cpu_moe: bool = typer.Option(False, "--cpu-moe", help=CPU_MOE_HELP),
    n_cpu_moe: Optional[int] = typer.Option(None, "--n-cpu-moe", help=N_CPU_MOE_HELP),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="MODE_EDGE_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set MODE_EDGE_API_KEY).",
    ),
    allow_images: Optional[list[Path]] = typer.Option(
        None, "--allow-images", help="Folder whose files may be sent as file: image URLs."
    ),
    max_request_mb: float = typer.Option(32.0, "--max-request-mb", help="Largest request body (413 above)."),
    max_image_pixels: int = typer.Option(
        4096 * 4096, "--max-image-pixels", help="Largest image (413 above)."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default: llama.cpp's choice)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show llama.cpp's and the server's log."),
) -> None:
    """Serve a converted model over an OpenAI-compatible HTTP API (chat completions with images)."""
    import uvicorn

    from mode_edge.evaluate import resolve_model
    from mode_edge.gguf import open_gguf
    from mode_edge.run import Limits, build_app, check_runtime, default_ctx

    check_offload(cpu_moe, n_cpu_moe)
    text_path, mmproj_path = resolve_model(model, mmproj)
    reader = open_gguf(text_path)
    check_runtime(text_path, reader)
    dirs = [Path(d).resolve() for d in allow_images or []]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"--allow-images {d} is not a folder", "pass an existing folder")
    limits = Limits(int(max_request_mb * 2**20), max_image_pixels, dirs)
    app, where = build_app(
        text_path,
        mmproj_path,
        n_ctx=ctx or default_ctx(reader),
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        api_key=api_key,
        limits=limits,
        cpu_moe=cpu_moe,
        n_cpu_moe=n_cpu_moe,
        verbose=verbose,
    )
    if cpu_moe or n_cpu_moe:
        console.print(where.summary())
    console.print(
        f"serving {text_path.name} at http://{host}:{port}/v1" + (" (API key required)" if api_key else "")
    )
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")
