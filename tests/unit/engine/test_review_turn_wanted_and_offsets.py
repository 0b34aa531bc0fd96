"""From a review of this session's fixes: (1) a stalled co-served engine reported the KV blocks of a
max_batch_tokens chunk while its step runs a turn's tokens, so the policy evicted prewarms for blocks no step would
use; (2) echo offsets taken from a tokenizer whose ByteLevel post-processor trims offsets (GPT-2's) left each
token's leading space out of its span: ' this' was placed at 'this'."""

import json
import shutil

from warmserve.controller import textstream
from warmserve.controller.models import load_tokenizer
from warmserve.engine.demo import write_demo_models
from warmserve.engine.scheduler import Scheduler, Sequence
from warmserve.protocol import SamplingParams


class _NoRoom:
    """A KV cache with no block to give: what a stalled engine's scheduler sees."""

    block_tokens, num_free_mapped, mapper = 256, 0, None

    def allocate(self):
        return None

    def free(self, block):
        pass


def test_a_stalled_turn_wants_the_blocks_of_its_own_chunk():
    s = Scheduler(_NoRoom(), max_batch_tokens=2048, max_num_seqs=32)
    s.add(Sequence("r", list(range(2000)), SamplingParams(max_tokens=4), 0))
    assert s.blocks_wanted() == 8  # before any step: a whole max_batch_tokens chunk of the 2,000-token prompt
    assert s.schedule(16) == []  # a co-served turn of 16 tokens: nothing fits
    assert s.blocks_wanted() == 1
    assert s.schedule() == [] and s.blocks_wanted() == 8  # alone again: the whole chunk


def test_echo_offsets_of_a_trimming_tokenizer_start_at_each_tokens_space(tmp_path):
    src = write_demo_models(None, ("llama-20m",))["llama-20m"]
    trimmed = tmp_path / "trim"
    shutil.copytree(src, trimmed)
    spec = json.loads((trimmed / "tokenizer.json").read_text())
    spec["post_processor"]["trim_offsets"] = True
    (trimmed / "tokenizer.json").write_text(json.dumps(spec))
    prompt = "Hello world, this is a test."
    for path in (src, trimmed):
        tok = load_tokenizer(str(path))
        ids = tok.encode(prompt, add_special_tokens=True)
        starts = tok.token_offsets(prompt, ids)
        pieces = [prompt[a:b] for a, b in zip(starts, starts[1:] + [len(prompt)])]
        assert pieces == [tok.decode([i]) for i in ids], (path, starts)
        assert starts == textstream.token_starts(ids, tok.decode)  # where the prompt is its tokens' decode
