"""What calibration measures: routing by modality, key tokens, quantization sensitivity, importance."""

from mode_edge._lazy import lazy_api

API = {
    "GAMMA_REPORTED": "importance",
    "IMPORTANCES": "importance",
    "expert_entries": "importance",
    "method_imatrix": "importance",
    "key_scores": "keytokens",
    "newline_ids": "keytokens",
    "query_positions": "keytokens",
    "select_key_tokens": "keytokens",
    "AttentionRecorder": "attention",
    "SharedExpertRecorder": "attention",
    "DenseFFNRecorder": "attention",
    "LayerRecorder": "recorder",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
