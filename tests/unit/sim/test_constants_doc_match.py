"""bench/simulate/CONSTANTS.md against the code it tabulates.

The project's rule is that every constant of the simulator has a source, and CONSTANTS.md is where the sources are
tabulated with the values; nothing kept the two in step, so a value changed on one side left the other stale. Each
table row is matched, by its first column verbatim, to an expression on the imported modules (``ROWS``); its value
column must read as that expression's value to the precision the document writes it (``22.94e9`` matches
22.942857e9; ``22.9e9`` would not, nor would the code's value moving). A row neither in ``ROWS`` nor in ``SKIPPED``
fails, and so does a ``ROWS`` entry whose row is gone, so a new row needs its check written here.
"""

import json
import re
from pathlib import Path

import pytest

from warmserve.policy import colocation, cosizing
from warmserve.policy.config import PolicyConfig
from warmserve.policy.registry import POLICIES
from warmserve.sim import costmodel as cm
from warmserve.sim import presets, shared_search
from warmserve.sim.config import MIN_TICK_S, SimConfig
from warmserve.sim.costmodel import GPU_TYPES, MODEL_COSTS, CostModel

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "bench" / "simulate" / "CONSTANTS.md"
CPU_PROFILE = json.loads((REPO / "bench" / "replay" / "profile_cpu.json").read_text())

COST = CostModel()
H100, A100 = GPU_TYPES["H100-80GB"], GPU_TYPES["A100-80GB"]
POLICY = PolicyConfig()
#: the registered `autoscale`'s own settings, which several policy rows state in parentheses
AUTOSCALE = POLICIES["autoscale"].overrides
SIZES = ("llama2-7b", "llama2-13b", "llama2-70b")


def each(f):
    """``f`` of the three paper models, in the order the "7B / 13B / 70B" rows list them."""
    return tuple(f(MODEL_COSTS[s]) for s in SIZES)


def same(*values):
    """The one value a row states for several places (e.g. both GPU types); the tuple, failing, if they differ."""
    return values[0] if len(set(values)) == 1 else values


# --- how a value cell is read ------------------------------------------------------------------------------------
# a number as written: 1e-3, 3.35e12, 524,288 (thousands grouped; "1, 2, 3" is three numbers), 0.100
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def _outside_parentheses(cell: str) -> str:
    return re.sub(r"\([^)]*\)", "", cell)


def numbers(cell: str) -> list[str]:
    """The numbers of the cell outside parentheses (the asides there are history or other places)."""
    return NUMBER.findall(_outside_parentheses(cell))


def all_numbers(cell: str) -> list[str]:
    """Every number of the cell, for rows whose parentheses state a second value the code has too."""
    return NUMBER.findall(cell)


def switches(cell: str) -> list[bool]:
    """on / off words, in order: "on (off for `autoscale`)" reads (True, False)."""
    return [w == "on" for w in re.findall(r"\b(on|off)\b", cell)]


def quoted(cell: str) -> list[str]:
    return re.findall(r'"([^"]+)"', cell)


def matches(written: str, value) -> bool:
    """Whether ``value`` rounds to ``written``: within half a unit of its last written digit."""
    if isinstance(written, bool) or isinstance(value, str):
        return written == value
    text = written.replace(",", "")
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2])
    half_unit = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    return abs(float(text) - float(value)) <= half_unit * (1 + 1e-9)


# --- the mapping: first column verbatim -> (reader of the value column, the code's value or values) --------------
# a row stating several values ("13.5e9 / 26.0e9 / 138e9", "14 - 35") maps to a tuple of them in order
ROWS = {
    # GPU
    "`GpuType.memory_bytes` (H100-80GB, A100-80GB)": (numbers, same(H100.memory_bytes, A100.memory_bytes)),
    "`GpuType.pool_fraction`": (numbers, same(H100.pool_fraction, A100.pool_fraction)),
    "`GpuType.h2d_bytes_per_s` = `PAPER_H2D_BYTES_PER_S` (H100)": (
        numbers, same(H100.h2d_bytes_per_s, cm.PAPER_H2D_BYTES_PER_S)),
    '`GPU_TYPES["A100-80GB"].h2d_bytes_per_s`': (numbers, A100.h2d_bytes_per_s),
    "`GpuType.compute_scale` (H100)": (numbers, H100.compute_scale),
    '`GPU_TYPES["A100-80GB"].compute_scale`': (numbers, A100.compute_scale),
    # "0 (GPUs); 2 in `bench/replay/profile_cpu.json`": the GPU default, then the CPU profile's
    "`GpuType.host_cores`": (all_numbers, (H100.host_cores, CPU_PROFILE["gpu"]["host_cores"])),
    "`GpuType.weight_read_bytes_per_s`": (numbers, same(H100.weight_read_bytes_per_s, A100.weight_read_bytes_per_s)),
    "`H100_SXM_HBM_BYTES_PER_S` = `GpuType.hbm_bytes_per_s`": (
        numbers, same(cm.H100_SXM_HBM_BYTES_PER_S, H100.hbm_bytes_per_s)),
    "`A100_SXM_HBM_BYTES_PER_S`": (numbers, same(cm.A100_SXM_HBM_BYTES_PER_S, A100.hbm_bytes_per_s)),
    "`H200_HBM_BYTES_PER_S`": (numbers, cm.H200_HBM_BYTES_PER_S),
    "`HBM_ACHIEVABLE_FRACTION` = `GpuType.hbm_achievable_fraction`": (
        numbers, same(cm.HBM_ACHIEVABLE_FRACTION, H100.hbm_achievable_fraction, A100.hbm_achievable_fraction)),
    "`HBM_ACHIEVABLE_FRACTION_RANGE`": (numbers, cm.HBM_ACHIEVABLE_FRACTION_RANGE),
    # Models
    "weights 7B / 13B / 70B": (numbers, each(lambda c: c.weight_bytes)),
    "tp 7B / 13B / 70B": (numbers, each(lambda c: c.tp)),
    "KV per token 7B / 13B / 70B": (numbers, each(lambda c: c.kv_bytes_per_token)),
    # the paper's one figure per model, as the split form gives it back at the paper's prompt length
    "prefill 7B / 13B / 70B": (numbers, each(lambda c: COST.prefill_s(c, cm.PAPER_PROMPT_TOKENS))),
    "`PREFILL_FIXED_SHARE`": (numbers, same(cm.PREFILL_FIXED_SHARE,
                                            *each(lambda c: round(c.prefill_base_s / COST.prefill_s(c, 1024), 12)))),
    "`PAPER_PROMPT_TOKENS`": (numbers, cm.PAPER_PROMPT_TOKENS),
    "decode step 7B / 13B / 70B": (numbers, each(lambda c: c.decode_base_s)),
    "`decode_per_seq_s`": (numbers, same(*each(lambda c: c.decode_per_seq_s))),
    # Cold start
    "`ENGINE_INIT_RANGE_S`": (numbers, cm.ENGINE_INIT_RANGE_S),
    "`ENGINE_INIT_S` = `CostModel.engine_init_s`": (numbers, same(cm.ENGINE_INIT_S, COST.engine_init_s)),
    "`LEGACY_ENGINE_START_S` = `CostModel.engine_start_s`": (
        numbers, same(cm.LEGACY_ENGINE_START_S, COST.engine_start_s)),
    "`TP_INIT_S` = `CostModel.tp_init_s`": (numbers, same(cm.TP_INIT_S, COST.tp_init_s)),
    "`LLAMA31_8B_WEIGHT_BYTES`": (numbers, cm.LLAMA31_8B_WEIGHT_BYTES),
    "`SERVERLESSLLM_8B_LOAD_S`": (numbers, cm.SERVERLESSLLM_8B_LOAD_S),
    "`FAST_LOAD_BYTES_PER_S`": (numbers, cm.FAST_LOAD_BYTES_PER_S),
    # "0 = the link, 32e9 (...)": the field's 0, then the link rate it falls back to
    "`CostModel.fast_load_bytes_per_s`": (numbers, (COST.fast_load_bytes_per_s, H100.h2d_bytes_per_s)),
    # "0 (GPU presets); ... (14.5 ms in `bench/replay/profile_cpu.json`)": the default, then the profile's, in ms
    "`CostModel.load_fixed_s`": (all_numbers, (COST.load_fixed_s, CPU_PROFILE["load_fixed_s"] * 1e3)),
    "`PAPER_REMAP_S_PER_GIB`": (numbers, cm.PAPER_REMAP_S_PER_GIB),
    "`CostModel.kv_map_s_per_gib`": (numbers, COST.kv_map_s_per_gib),
    "`ACTIVATION_MEASURED_H200_S`": (numbers, cm.ACTIVATION_MEASURED_H200_S),
    "`ACTIVATION_GOAL_S_PER_10GB`": (numbers, cm.ACTIVATION_GOAL_S_PER_10GB),
    "`LEGACY_ACTIVATION_S` = `CostModel.activation_s`": (numbers, same(cm.LEGACY_ACTIVATION_S, COST.activation_s)),
    # vLLM engine limits
    "`max_running_seqs`": (numbers, COST.limits.max_running_seqs),
    "`block_size_tokens`": (numbers, COST.limits.block_size_tokens),
    "`max_model_len_tokens`": (numbers, COST.limits.max_model_len_tokens),
    "`max_batched_tokens`": (numbers, COST.limits.max_batched_tokens),
    # Simulator settings and the `shared` baseline's rules
    "`SimConfig.tick_s`": (numbers, SimConfig().tick_s),
    "`CostModel.colocation_interference`": (quoted, COST.colocation_interference),
    "`shared_search.MAX_CANDIDATES`": (numbers, shared_search.MAX_CANDIDATES),
    "`shared_search.PER_GROUP_CHOICES`": (numbers, shared_search.PER_GROUP_CHOICES),
    "`shared_search.SLO_SHORTLIST`": (numbers, shared_search.SLO_SHORTLIST),
    "`colocation.WEIGHT_SHARE`": (numbers, colocation.WEIGHT_SHARE),
    # Cluster, presets and the simulator's other settings
    "`SimConfig.n_servers`": (numbers, SimConfig().n_servers),
    "`SimConfig.gpus_per_server`": (numbers, SimConfig().gpus_per_server),
    "`MIN_TICK_S`": (numbers, MIN_TICK_S),
    "`SimConfig.drain_s`": (numbers, SimConfig().drain_s),
    "`SimConfig.slo_scale`": (numbers, SimConfig().slo_scale),
    "`PAPER_N_MODELS`": (numbers, presets.PAPER_N_MODELS),
    "`PAPER_ALPHA`": (numbers, presets.PAPER_ALPHA),
    "`ARTIFACT_N_MODELS`": (numbers, presets.ARTIFACT_N_MODELS),
    "`ARTIFACT_ALPHA`": (numbers, presets.ARTIFACT_ALPHA),
    "`PRESET_RATE_RPS`": (numbers, presets.PRESET_RATE_RPS),
    "`RECIPE_WARMUP_S`": (numbers, presets.RECIPE_WARMUP_S),
    # the dataclass default is warm-up + replay; the row states the replay's part
    "`Preset.span_s` replay": (numbers, presets.Preset("x", SimConfig()).span_s - presets.RECIPE_WARMUP_S),
    "`SERVEGEN_REPEAT_DAYS`": (numbers, presets.SERVEGEN_REPEAT_DAYS),
    "`SCALE_N_MODELS`": (numbers, presets.SCALE_N_MODELS),
    # The policy's core knobs (PolicyConfig): "0 (no limit)" reads the 0
    "`instance_capacity`": (numbers, POLICY.instance_capacity),
    "`window_s`": (numbers, POLICY.window_s),
    "`scale_in_threshold`": (numbers, POLICY.scale_in_threshold),
    "`load_window_s`": (numbers, POLICY.load_window_s),
    "`residual_windows`": (numbers, POLICY.residual_windows),
    "`min_free_kv_blocks`": (numbers, POLICY.min_free_kv_blocks),
    "`round_robin_step`": (numbers, POLICY.round_robin_step),
    "`replan_s`": (numbers, POLICY.replan_s),
    "`retain_wait_s`": (numbers, POLICY.retain_wait_s),
    "`max_instances_per_model`": (numbers, POLICY.max_instances_per_model),
    "`route_cap_per_instance`": (numbers, POLICY.route_cap_per_instance),
    "`scale_in_window_s`": (numbers, POLICY.scale_in_window_s),
    "`preempt_after_s`": (numbers, POLICY.preempt_after_s),
    # Policy knobs (PolicyConfig); "X (Y for `autoscale`)" reads the default, then the registered autoscale's
    "`reclaim_floor_share`": (numbers, POLICY.reclaim_floor_share),
    "`reclaim_for_starved`": (switches, POLICY.reclaim_for_starved),
    "`max_starved_s`": (numbers, POLICY.max_starved_s),
    "`forecast_keep_yields_to_starved`": (switches, POLICY.forecast_keep_yields_to_starved),
    "`defragment`": (switches, POLICY.defragment),
    "`defragment_over_prewarms`": (switches, POLICY.defragment_over_prewarms),
    "`scale_out_now`": (switches, POLICY.scale_out_now),
    "`route_least_prefill`": (switches, POLICY.route_least_prefill),
    "`kv_shrink_on_demand`": (switches, POLICY.kv_shrink_on_demand),
    "`scale_in_hold_s`": (numbers, POLICY.scale_in_hold_s),
    "`last_instance_hold_s`": (all_numbers, (POLICY.last_instance_hold_s, AUTOSCALE["last_instance_hold_s"])),
    "`migrate_max_in_flight`": (all_numbers, (POLICY.migrate_max_in_flight, AUTOSCALE["migrate_max_in_flight"])),
    "`scale_in_floor_now`": (switches, (POLICY.scale_in_floor_now, AUTOSCALE["scale_in_floor_now"])),
    "`prefill_budget_decode_stretch`": (switches, POLICY.prefill_budget_decode_stretch),
    "`coserve_tpot_s`": (numbers, POLICY.coserve_tpot_s),
    "`coserve_max_models`": (numbers, POLICY.coserve_max_models),
    "`coserve_context_tokens`": (numbers, POLICY.coserve_context_tokens),
    # "3.35e12 x 0.68 = 2.278e12": the policy's copy must stay the simulator's product
    "`decode_read_bytes_per_s`": (numbers, (cm.H100_SXM_HBM_BYTES_PER_S, cm.HBM_ACHIEVABLE_FRACTION,
                                            POLICY.decode_read_bytes_per_s)),
    "`cosizing.WEIGHT_SHARE_PER_HOST`": (numbers, cosizing.WEIGHT_SHARE_PER_HOST),
}

#: rows with no single value to compare, and why
SKIPPED = {
    # a measurement the document reports (bench/switch), held by no constant in the code
    "(measured, not a constant) KV mapping on warmserve's own GPU path",
    # a rule (the operator's configured context, else the run's longest request), not a number
    "`ModelInfo.max_context_tokens` (simulator)",
    # literals inside functions (sim.inputs.model_infos, shared_search.workload_stats), no name to import; the
    # values are checked below by what the functions return
    "`model_infos` decode batch",
    "`workload_stats` rate of a model with no history",
    "`workload_stats` means with no history",
}


def table_rows() -> list[tuple[str, str]]:
    """(first column, value column) of every row of every table whose header starts ``| name | value |``."""
    rows, in_table = [], False
    for line in DOC.read_text().splitlines():
        if line.startswith("| name | value |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.append((cells[0], cells[1]))
    return rows


ROWS_IN_DOC = table_rows()


def test_every_row_is_checked_or_skipped_with_a_reason():
    names = [name for name, _ in ROWS_IN_DOC]
    assert len(names) == len(set(names)), "two rows share a first column: the mapping could not tell them apart"
    unmapped = [n for n in names if n not in ROWS and n not in SKIPPED]
    assert not unmapped, f"CONSTANTS.md rows with no check here: add each to ROWS (or SKIPPED, with why): {unmapped}"
    gone = sorted((ROWS.keys() | SKIPPED) - set(names))
    assert not gone, f"checks for rows CONSTANTS.md no longer has (renamed or removed?): {gone}"


@pytest.mark.parametrize("name,cell", [r for r in ROWS_IN_DOC if r[0] in ROWS], ids=lambda v: v[:40])
def test_the_documented_value_is_the_codes(name, cell):
    read, value = ROWS[name]
    written = read(cell)
    expected = list(value) if isinstance(value, tuple) else [value]
    assert len(written) == len(expected) and all(matches(w, v) for w, v in zip(written, expected)), (
        f"CONSTANTS.md row {name}: the value column {cell!r} reads {written}, the code has {expected}")


def test_the_literals_the_skipped_rows_name():
    """The function literals of three skipped rows, by what the functions return: model_infos' decode profile is
    the step at 16 sequences, workload_stats' fallbacks 1e-3 requests/s and 1024 / 256 tokens."""
    from types import SimpleNamespace

    from warmserve.sim.config import ServedModel
    from warmserve.sim.inputs import model_infos
    from warmserve.workload.request import Trace

    cost = CostModel.from_profile({"schema": cm.SCHEMA, "models": {"llama2-7b": {
        "decode_table": [[1, 0.010], [32, 0.042]], "prefill_table": [[1024, 0.035], [2048, 0.08]]}}})
    (info,) = model_infos([ServedModel("m", "llama2-7b")], cost)
    assert info.decode_s_per_token == pytest.approx(0.010 + 0.032 * 15 / 31)
    assert info.prefill_s == pytest.approx(0.035)
    empty = SimpleNamespace(workload=SimpleNamespace(history=Trace.empty(["m"]), history_spans=[]), names=["m"])
    assert shared_search.workload_stats(empty) == {"m": (1e-3, 1024.0, 256.0)}


def test_the_prose_figures_are_the_codes():
    """The derived figures CONSTANTS.md states in prose: cold starts, KV capacities and the decode worked example."""
    text = DOC.read_text()
    c7, c70 = MODEL_COSTS["llama2-7b"], MODEL_COSTS["llama2-70b"]
    figures = [
        f"Llama-2 7B: 14 + 0.42 = {COST.vllm_cold_start_s(c7):.2f} s",
        f"(tp 4): 14 + 1.08 = {COST.vllm_cold_start_s(c70):.2f} s",
        f"7B {COST.kv_capacity_tokens(c7):,}\ntokens",  # the line breaks there
        f"70B (tp 4) {COST.kv_capacity_tokens(c70):,} tokens",
        f"step {COST.decode_step_s(c7, 64, 64_000) * 1e3:.1f} ms",
        f"(13.5e9 / 3.35e12 = {c7.weight_bytes / cm.H100_SXM_HBM_BYTES_PER_S * 1e3:.2f} ms)",
        f"(H100: 3.35e12 x 0.68 = {H100.decode_read_bytes_per_s / 1e12:.3f}e12 B/s)",
    ]
    missing = [f for f in figures if f not in text]
    assert not missing, f"CONSTANTS.md no longer states the code's figures: {missing}"
