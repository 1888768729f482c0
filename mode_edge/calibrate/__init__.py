"""Stage 1, calibrate: run the model layer by layer on calibration data and record MODE's expert statistics."""

from mode_edge._lazy import lazy_api

API = {
    "CalibrationOptions": "runner",
    "Progress": "runner",
    "calibrate": "runner",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
