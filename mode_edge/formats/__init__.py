"""File formats and schemas shared by the stages: expert statistics, quant plans, expert-group
naming, calibration samples, tensors, importance matrices, checkpoints and quant types.

Stages import formats; formats import no stage (tests/test_layering.py)."""
