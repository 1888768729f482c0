"""mode-edge's llama.cpp patch series (package data: NNNN-*.patch, applied in order by
mode_edge/runtime/build.py). See vendor/README.md."""
