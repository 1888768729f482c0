"""Stage 2, plan: a llama.cpp type for every routed expert under a budget (the ILP), and the stock presets as plans."""

from mode_edge._lazy import lazy_api

API = {
    "AllocOptions": "allocator",
    "Allocation": "allocator",
    "allocate": "allocator",
    "check_budget_before_calibration": "allocator",
    "method_importance": "allocator",
    "Budget": "budget",
    "parse_budget": "budget",
    "DEFAULT_METHOD": "methods",
    "METHODS": "methods",
    "get_method": "methods",
    "is_preset": "presets",
    "preset_plan": "presets",
    "histogram": "plan_files",
    "parts": "plan_files",
    "save_plan": "plan_files",
    "ModelLayout": "layout",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
