"""`mode-edge chat`: a terminal chat with a converted model, images included, through
llama-cpp-python's multimodal (mtmd) chat handler and the model's own chat template."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

from mode_edge.errors import UserError


def default_ctx(reader, cap: int = 4096) -> int:
    """The model's training context, at most cap (a long-context model would reserve a huge KV cache)."""
    from mode_edge.gguf import field_value

    n = field_value(reader, f"{field_value(reader, 'general.architecture')}.context_length")
    return min(cap, int(n)) if n is not None else cap


def needs_patched_runtime(reader) -> bool:
    from mode_edge.formats.groups import GROUPS_KEY

    return reader.get_field(GROUPS_KEY) is not None


def check_runtime(text_path: Path, reader) -> None:
    from mode_edge.runtime import GROUPS, capabilities

    if needs_patched_runtime(reader) and not capabilities() & GROUPS:
        raise UserError(
            f"{text_path.name} gives experts of one tensor different types (expert groups), which the "
            "installed llama.cpp cannot run",
            "run `mode-edge runtime build` once, then try again",
        )


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist", "check the path") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(
            f"cannot read image {path} ({e.__class__.__name__})", "pass a PNG, JPEG or WebP file"
        ) from None


def check_image(path: Path) -> None:
    """Fail early on a missing or unreadable image (reads the header only)."""
    _open_image(path).close()


def image_url(path: Path) -> str:
    with _open_image(path) as im:
        buf = io.BytesIO()
        try:
            im.convert("RGB").save(buf, format="PNG")
        except OSError as e:  # a truncated file fails only when its pixels are read
            raise UserError(
                f"cannot read image {path} ({e.__class__.__name__})", "pass a PNG, JPEG or WebP file"
            ) from None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Chat:
    def __init__(
        self,
        text_path: Path,
        mmproj_path: Path,
        n_ctx: int | None = None,
        n_gpu_layers: int = 0,
        threads: int | None = None,
        verbose: bool = False,
        cpu_moe: bool = False,
        n_cpu_moe: int | None = None,
    ):
        import llama_cpp
        from llama_cpp.llama_chat_format import MTMDChatHandler

        from mode_edge.gguf import open_gguf

        reader = open_gguf(text_path)  # one read of the header: expert groups and context length
        check_runtime(text_path, reader)
        n_ctx = n_ctx or default_ctx(reader)
        if not verbose:
            from mode_edge.run.mtmd import quiet_mtmd_logs

            quiet_mtmd_logs()
        handler = MTMDChatHandler(
            clip_model_path=str(mmproj_path), verbose=verbose, use_gpu=n_gpu_layers != 0
        )
        from mode_edge.run.offload import placement

        try:
            with placement(cpu_moe, n_cpu_moe) as self.placement:
                self.llm = llama_cpp.Llama(
                    str(text_path),
                    n_ctx=n_ctx,
                    n_gpu_layers=n_gpu_layers,
                    verbose=verbose,
                    chat_handler=handler,
                    **({"n_threads": threads} if threads else {}),
                )
        except ValueError as e:
            raise UserError(
                f"llama.cpp could not load {text_path.name} ({e})",
                "rerun with --verbose to see llama.cpp's reason",
            ) from None
        self.messages: list[dict] = []

    def ask(
        self, text: str, images: list[Path] = (), max_tokens: int = 512, temperature: float = 0.0
    ) -> Iterator[str]:
        content = [{"type": "image_url", "image_url": {"url": image_url(p)}} for p in images]
        content.append({"type": "text", "text": text})
        self.messages.append({"role": "user", "content": content if images else text})
        pieces = []
        for chunk in self.llm.create_chat_completion(
            messages=self.messages, max_tokens=max_tokens, temperature=temperature, seed=0, stream=True
        ):
            piece = chunk["choices"][0]["delta"].get("content") or ""
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def reset(self) -> None:
        self.messages.clear()

    def close(self) -> None:
        self.llm.close()
