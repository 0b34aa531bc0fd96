"""The engine: Llama-family models served from memory-manager slots.

    job = load_model(path, pool)            # pipelined load into a new slot tagged "prewarm:<name>"
    lm = job.wait()                          # LoadedModel: weights resident, prewarmed
    engine = Engine(lm)                      # activation: zero-copy views, KV cache mapped lazily after the weights
    engine.add_request("r1", ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished(): outs = engine.step()
    engine.close()                           # deactivate: KV pages back to the pool, weights stay
    lm.close()                               # evict
"""

from warmserve.engine.demo import DEMO_MODELS, SMALL_MODELS, write_demo_models
from warmserve.engine.engine import Engine, StepOutput
from warmserve.engine.loader import LoadedModel, ModelLoad, load_model
from warmserve.engine.config import ModelConfig, UnsupportedModelError
from warmserve.engine.sampler import SamplingParams
from warmserve.engine.tokenizer import Tokenizer

__all__ = [
    "DEMO_MODELS", "SMALL_MODELS", "write_demo_models", "Engine", "StepOutput", "LoadedModel", "ModelLoad",
    "load_model", "ModelConfig", "UnsupportedModelError", "SamplingParams", "Tokenizer",
]
