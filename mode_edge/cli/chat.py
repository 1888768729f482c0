"""`mode-edge chat`: a terminal chat with images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mode_edge.cli.app import app, console, out
from mode_edge.cli.common import CPU_MOE_HELP, N_CPU_MOE_HELP, check_offload
from mode_edge.errors import UserError

CHAT_EPILOG = """Examples:

  mode-edge chat out/ --image photo.jpg                 (interactive; the mmproj is found in out/)

  mode-edge chat out/model-mode-12gb.gguf --image photo.jpg --prompt "What is in the picture?"

In the interactive chat: /image PATH attaches an image to the next message, /reset forgets
the conversation, /quit (or Ctrl-D) leaves.
"""


@app.command(epilog=CHAT_EPILOG)
def chat(
    model: Path = typer.Argument(..., help="A folder written by `mode-edge convert`, or a text GGUF."),
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="Vision projector (default: found beside MODEL)."
    ),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image(s) for the first message."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Ask once, print the answer, exit."),
    n_gpu_layers: int = typer.Option(
        0, "--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all)."
    ),
    ctx: int = typer.Option(0, "--ctx", help="Context length in tokens (0: the model's, at most 4096)."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default: llama.cpp's choice)."
    ),
    cpu_moe: bool = typer.Option(False, "--cpu-moe", help=CPU_MOE_HELP),
    n_cpu_moe: Optional[int] = typer.Option(None, "--n-cpu-moe", help=N_CPU_MOE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show llama.cpp's log."),
) -> None:
    """Chat with a converted model in the terminal (images through its vision projector)."""
    from mode_edge.evaluate import resolve_model
    from mode_edge.run import Chat, check_image

    check_offload(cpu_moe, n_cpu_moe)
    text_path, mmproj_path = resolve_model(model, mmproj)
    images = list(image or [])
    for p in images:
        check_image(p)  # unreadable images fail before the model loads
    session = Chat(
        text_path,
        mmproj_path,
        n_ctx=ctx,
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        verbose=verbose,
        cpu_moe=cpu_moe,
        n_cpu_moe=n_cpu_moe,
    )
    if cpu_moe or n_cpu_moe:
        console.print(session.placement.summary())
    try:
        if prompt is not None:
            for piece in session.ask(prompt, images, max_tokens, temperature):
                out.print(piece, end="", highlight=False, markup=False)
            out.print()
            return
        console.print(f"[bold]{text_path.name}[/bold] — /image PATH, /reset, /quit")
        pending = images
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                session.reset()
                pending = []
                continue
            if line.startswith("/image "):
                p = Path(line[len("/image ") :].strip())
                try:
                    check_image(p)
                    pending.append(p)
                except UserError as e:
                    console.print(f"[red]error:[/red] {e}")
                continue
            for piece in session.ask(line, pending, max_tokens, temperature):
                out.print(piece, end="", highlight=False, markup=False)
            out.print()
            pending = []
    finally:
        session.close()
