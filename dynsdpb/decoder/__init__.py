"""The decoder (causal LM) family: token-level DynSDPB on target tokens, LoRA, generation.

    data.py        prompt -> target rows (built-ins from reasoning-gym, files, hub), tokenized
    models.py      the built-in SmolLM2 (GGUF -> dense), local folders, hub ids, LoRA arms on one base
    loss.py        the token-level loss and the compact (top-k) teacher cache
    generation.py  greedy generation, answer extraction, exact match, target perplexity
    task.py        CausalLMTask: the engine's task seam for decoders
"""
