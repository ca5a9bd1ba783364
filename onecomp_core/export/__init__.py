"""Formats other than the Hugging Face folder, registered through the built-in plugin.

``gguf``: one GGUF file for llama.cpp (:mod:`.gguf_format`, blocks in :mod:`.gguf_blocks`).
"""
