"""The engine tests' tiny checkpoints (written by conftest.py's ``tiny_dir``), in a module of their own name: test
modules import them from here, since ``from conftest import`` takes whichever conftest was imported last (the one
of another test folder, in a run of several folders). Not a test module."""

from warmserve.engine.demo import DemoSpec

TINY_VOCAB = 512
#: Tiny checkpoints for the config variants the demo set does not cover (rope kinds, sliding window, biases).
TINY = {
    "tiny-linear": DemoSpec("llama", 64, 128, 2, 4, 2, rope_scaling=(("factor", 2.0), ("rope_type", "linear")),
                            vocab_size=TINY_VOCAB),
    "tiny-llama3": DemoSpec("llama", 64, 128, 2, 4, 2, rope_theta=5e5,
                            rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                                          ("original_max_position_embeddings", 64), ("rope_type", "llama3")),
                            vocab_size=TINY_VOCAB),
    "tiny-yarn": DemoSpec("qwen2", 64, 128, 2, 4, 4,
                          rope_scaling=(("factor", 4.0), ("original_max_position_embeddings", 128),
                                        ("rope_type", "yarn")), vocab_size=TINY_VOCAB),
    "tiny-mistral": DemoSpec("mistral", 64, 128, 2, 4, 1, sliding_window=24, vocab_size=TINY_VOCAB,
                             tie_word_embeddings=True),
    "tiny-bias": DemoSpec("llama", 64, 160, 3, 2, 2, vocab_size=TINY_VOCAB,
                          extra=(("attention_bias", True), ("mlp_bias", True))),
}
