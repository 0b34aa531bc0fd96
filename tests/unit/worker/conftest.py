from __future__ import annotations

import resource

import pytest

# Three tiny Llama-family checkpoints in Hugging Face layout (random weights); each KV block of 256 tokens over
# all layers is one 2 MiB page, as with the demo models.
VOCAB = 1024
TINY = {
    "tiny-llama": dict(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                       num_attention_heads=4, num_key_value_heads=2),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
                       max_position_embeddings=512),
    "tiny-deep": dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=16,
                      num_attention_heads=4, num_key_value_heads=1),
}


def write_tiny_models(out_dir: str) -> dict[str, str]:
    from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint

    tok = build_tokenizer(VOCAB)
    return {name: write_checkpoint(out_dir, name, config_dict(DemoSpec(**spec, vocab_size=VOCAB)), tokenizer=tok)
            for name, spec in TINY.items()}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return write_tiny_models(str(tmp_path_factory.mktemp("tiny-models")))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread for every test here, as each CPU worker of the test clusters runs: with torch's default two
    on a 2-core machine that is busy otherwise, every small step waits for the other thread (a test here took 24 s
    in CI, under 2 s with one; another 10.2 s in the suite, about 1 s alone). Restored after, for the tests that run
    next in this process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def worker():
    """An in-process CPU worker with a 0.25 GiB pool (on one torch thread: ``one_torch_thread``)."""
    from warmserve.worker import InProcessWorker

    with InProcessWorker("cpu", memory_gib=0.25) as w:
        yield w


@pytest.fixture
def fds_past_1023():
    """Room for descriptors numbered past 1,023 (as with over 1,024 client connections open): the soft
    RLIMIT_NOFILE raised to 1,200 for the test where it is lower, or the test skipped where the hard one is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: no descriptor past 1,023 to test with")
    raise_soft = soft != resource.RLIM_INFINITY and soft < 1200
    if raise_soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    yield
    if raise_soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
