"""Thin, explicit access to llama.cpp's multimodal (mtmd) API through llama-cpp-python.

The chat handler hides the image embeddings and the logits; verification and evaluation
need both, so this wraps the C API directly: tokenize a prompt with media markers, encode
an image, evaluate all chunks into the llama context, read the last logits.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def quiet_mtmd_logs() -> None:
    """mtmd logs every chunk it tokenizes; route it through llama-cpp-python's filter."""
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp._logger import llama_log_callback

    mtmd.mtmd_log_set(llama_log_callback, None)
    mtmd.mtmd_helper_log_set(llama_log_callback, None)


class MtmdSession:
    def __init__(
        self,
        model_path: Path,
        mmproj_path: Path,
        n_ctx: int = 2048,
        n_threads: int = 2,
        f32_kv: bool = False,
        verbose: bool = False,
    ):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd = mtmd
        if not verbose:
            quiet_mtmd_logs()
        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
        self.llm = llama_cpp.Llama(
            str(model_path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, verbose=verbose, **kv
        )
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), self.llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not load the projector {mmproj_path}")
        self.marker = mtmd.mtmd_default_marker().decode()

    def close(self) -> None:
        if self.ctx:
            self._mtmd.mtmd_free(self.ctx)
            self.ctx = None
        self.llm.close()

    def __enter__(self) -> MtmdSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tokenize(self, prompt: str, images: list[np.ndarray]):
        m = self._mtmd
        bitmaps = []
        for img in images:
            img = np.ascontiguousarray(img, dtype=np.uint8)
            h, w, _ = img.shape
            buf = (ctypes.c_uint8 * img.nbytes).from_buffer_copy(img.tobytes())
            bitmaps.append(m.mtmd_bitmap_init(w, h, buf))
        text = prompt.encode()
        inp = m.mtmd_input_text()
        inp.text = text
        inp.text_len = len(text)
        inp.add_special = False
        inp.parse_special = True
        chunks = m.mtmd_input_chunks_init()
        arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        for b in bitmaps:
            m.mtmd_bitmap_free(b)
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise RuntimeError(f"mtmd_tokenize failed ({rc})")
        return chunks

    def image_embeddings(self, image: np.ndarray) -> np.ndarray:
        """The projector's output for one RGB uint8 image: [n_tokens, n_embd_inp], every image
        chunk in order (a projector that slices images into tiles gives one chunk per tile)."""
        m = self._mtmd
        chunks = self._tokenize(self.marker, [image])
        out = []
        try:
            for i in range(m.mtmd_input_chunks_size(chunks)):
                ch = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(ch) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n = m.mtmd_input_chunk_get_n_tokens(ch)
                    if m.mtmd_encode_chunk(self.ctx, ch) != 0:
                        raise RuntimeError("mtmd_encode_chunk failed")
                    width = _n_embd_inp(self.llm)  # text width x (1 + deepstack layers)
                    ptr = m.mtmd_get_output_embd(self.ctx)
                    out.append(np.ctypeslib.as_array(ptr, shape=(n, width)).copy())
        finally:
            m.mtmd_input_chunks_free(chunks)
        if not out:
            raise RuntimeError("the prompt produced no image chunk")
        return np.concatenate(out)

    def eval_prompt(self, prompt: str, images: list[np.ndarray]) -> int:
        """Evaluate a prompt (media markers where images go) from an empty cache; returns the
        position the next token takes (image chunks advance it by their M-RoPE extent)."""
        import llama_cpp

        m = self._mtmd
        self.llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
        chunks = self._tokenize(prompt, images)
        try:
            new_past = llama_cpp.llama_pos(0)
            rc = m.mtmd_helper_eval_chunks(
                self.ctx, self.llm.ctx, chunks, 0, 0, self.llm.n_batch, True, ctypes.byref(new_past)
            )
            if rc != 0:
                raise RuntimeError(f"mtmd_helper_eval_chunks failed ({rc})")
        finally:
            m.mtmd_input_chunks_free(chunks)
        return int(new_past.value)

    def logits_at(self, i: int) -> np.ndarray:
        """Logits of output row i of the last decode (-1: the last one)."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def last_logits(self, prompt: str, images: list[np.ndarray]) -> np.ndarray:
        """Evaluate a prompt (media markers where images go) from an empty cache."""
        self.eval_prompt(prompt, images)
        return self.logits_at(-1)

    def decode(self, tokens: list[int], n_past: int) -> np.ndarray:
        """Append text tokens at positions n_past, n_past+1, … (as mtmd's helper places text
        after an image) and return the logits after each: [len(tokens), n_vocab]."""
        import llama_cpp

        n = len(tokens)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = int(t)
                batch.pos[i] = n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.llm.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")
        finally:
            llama_cpp.llama_batch_free(batch)
        return np.stack([self.logits_at(i) for i in range(n)])


def _n_embd_inp(llm) -> int:
    import llama_cpp

    return int(llama_cpp.llama_model_n_embd_inp(llm.model))
