"""The engine: Llama-family models served from memory-manager slots.

    job = load_model(path, pool)            # pipelined load into a new slot tagged "prewarm:<name>"
    lm = job.wait()                          # LoadedModel: weights resident, prewarmed
    engine = Engine(lm)                      # activation: zero-copy views, KV cache mapped lazily after the weights
    engine.add_request("r1", ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished(): outs = engine.step()
    engine.close()                           # deactivate: KV pages back to the pool, weights stay
    lm.close()                               # evict
"""

# Imported lazily: the controller reads tokenizers and the demo directory from here and must not pay for torch,
# which the model, loader and engine modules import.
_LAZY = {
    "DEMO_MODELS": "demo", "SMALL_MODELS": "demo", "write_demo_models": "demo",
    "Engine": "engine", "StepOutput": "engine",
    "LoadedModel": "loader", "ModelLoad": "loader", "load_model": "loader",
    "ModelConfig": "config", "UnsupportedModelError": "config",
    "Tokenizer": "tokenizer",
}


def __getattr__(name: str):
    if name == "SamplingParams":  # the one sampling type lives with the messages (no torch needed)
        from warmserve.protocol import SamplingParams

        return SamplingParams
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"warmserve.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'warmserve.engine' has no attribute {name!r}")


__all__ = [
    "DEMO_MODELS", "SMALL_MODELS", "write_demo_models", "Engine", "StepOutput", "LoadedModel", "ModelLoad",
    "load_model", "ModelConfig", "UnsupportedModelError", "SamplingParams", "Tokenizer",
]
