"""The page and KV-block arithmetic every part of warmserve plans and maps with (geometry.py), by hand: one wrong
rounding here makes the policy, the simulator and the engine disagree on a model's footprint."""

from warmserve.geometry import (DTYPE_BYTES, GPU_PAGE_BYTES, KV_BLOCK_TOKENS, PAGE_BYTES, align_up, blocks_for_tokens,
                                default_page_bytes, is_page_size, kv_block_bytes, kv_bytes_per_token, pages_for,
                                shard_bytes)

MIB = 1 << 20


def test_the_units_are_2_mib_pages_32_mib_gpu_pages_and_256_token_blocks():
    assert (PAGE_BYTES, GPU_PAGE_BYTES, KV_BLOCK_TOKENS) == (2 * MIB, 32 * MIB, 256)
    assert DTYPE_BYTES == {"float32": 4, "float16": 2, "bfloat16": 2}


def test_sizes_round_up_to_whole_pages():
    assert [align_up(n) for n in (0, 1, 2 * MIB, 2 * MIB + 1)] == [0, 2 * MIB, 2 * MIB, 4 * MIB]
    assert align_up(33 * MIB, 32 * MIB) == 64 * MIB
    assert [pages_for(n) for n in (0, 1, 2 * MIB, 2 * MIB + 1)] == [0, 1, 1, 2]
    assert pages_for(33 * MIB, 32 * MIB) == 2


def test_a_page_size_is_a_positive_multiple_of_the_base_page():
    assert [is_page_size(n) for n in (0, -2 * MIB, MIB, 2 * MIB, 3 * MIB, 32 * MIB)] == \
        [False, False, False, True, False, True]


def test_only_all_gpu_workers_default_to_the_gpu_page():
    assert default_page_bytes(["cuda:0", "cuda:1"]) == GPU_PAGE_BYTES
    assert default_page_bytes(iter(["cuda:0"])) == GPU_PAGE_BYTES  # any iterable, read once
    assert default_page_bytes(["cuda:0", "cpu:0"]) == PAGE_BYTES
    assert default_page_bytes(["cpu:0"]) == PAGE_BYTES
    assert default_page_bytes([]) == PAGE_BYTES


def test_kv_bytes_and_blocks_of_llama2_7b():
    # K and V x 32 layers x 32 KV heads x 128 head dim x 2 bytes (bf16): 524,288 B per token (Touvron et al. 2023)
    assert kv_bytes_per_token(32, 32, 128, 2) == 524_288
    assert [blocks_for_tokens(n) for n in (0, 1, 256, 257, 1001)] == [0, 1, 1, 2, 4]
    assert blocks_for_tokens(10, block_tokens=4) == 3
    # a block: 256 tokens x 524,288 B = 128 MiB, already whole pages; each of tp 2 GPUs holds half of it
    assert kv_block_bytes(524_288) == 128 * MIB
    assert kv_block_bytes(524_288, 2) == 64 * MIB
    assert kv_block_bytes(524_288, page_bytes=GPU_PAGE_BYTES) == 128 * MIB


def test_a_kv_block_pads_to_whole_pages_and_whole_rows():
    # 16 tokens x 1,000 B = 16,000 B: one 2 MiB page; 0 B per token still maps a page (counted as 1 B a token)
    assert kv_block_bytes(1000, block_tokens=16) == 2 * MIB
    assert kv_block_bytes(0) == 2 * MIB
    # rows of 3 MiB: 2 MiB and 4 MiB hold no whole number of them, 6 MiB does
    assert kv_block_bytes(1000, block_tokens=16, row_bytes=3 * MIB) == 6 * MIB
    # a 40 MiB block on 32 MiB pages: 64 MiB
    assert kv_block_bytes(160 * 1024, block_tokens=256, page_bytes=32 * MIB) == 64 * MIB


def test_a_weight_shard_is_its_share_in_whole_pages():
    # 13.5e9 B: 6,437.6 pages of 2 MiB -> 6,438 pages = 13,501,464,576 B; on 32 MiB pages 403 = 13,522,436,096 B
    assert shard_bytes(13.5e9) == 6438 * 2 * MIB == 13_501_464_576
    assert shard_bytes(13.5e9, page_bytes=32 * MIB) == 13_522_436_096
    # Llama-2 70B on 4 GPUs: 34.5e9 B each -> 16,450.9 pages -> 16,451 = 34,500,247,552 B
    assert shard_bytes(138e9, 4) == 16451 * 2 * MIB == 34_500_247_552
