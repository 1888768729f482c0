"""Stage 3, pack: GGUF files (text + mmproj) with per-expert types, and reading them back."""

from mode_edge._lazy import lazy_api

API = {
    "ExportResult": "export",
    "export_model": "export",
    "output_paths": "export",
    "planned_sizes": "export",
    "Packer": "pack",
    "keeps_f32": "pack",
    "resolve_types": "pack",
    "OutTensor": "writer",
    "tensor_nbytes": "writer",
    "write_gguf": "writer",
    "field_value": "inspect",
    "open_gguf": "inspect",
    "summarize": "inspect",
    "PRECISIONS": "precision",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
