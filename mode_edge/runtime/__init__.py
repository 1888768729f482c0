"""mode-edge's llama.cpp runtime: our patch on llama-cpp-python's bundled llama.cpp (vendor/)."""
