"""Checks of a cost profile's sections and values (``CostModel.from_profile``, `warmserve simulate --profile`), and of
the same fields where the Python API builds a ``GpuType`` or a ``CostModel`` directly.

Found in review: a profile was read with bare ``float()``/``int()``/indexing, so ``"gpu": 5`` and a fraction written as
a string were TypeErrors, ``"prefill_s": 0.03`` an AttributeError, a table point without its time an IndexError and
``h2d_bytes_per_s`` 0 a ZeroDivisionError at the first load; negative times were taken and ran the simulated clock
backwards (``engine_init_s`` -30 gave a TTFT of -1.5 s). Every refusal here is an InvalidArgumentError naming the key
(``gpu.h2d_bytes_per_s``, ``models.llama2-7b.decode_table``), its value and what it must be.
"""

from __future__ import annotations

import math
import numbers

from warmserve.errors import InvalidArgumentError

#: where a profile comes from, for the fix each refusal names
FIX = "correct it in the profile (`warmserve calibrate --out` writes a valid one)"


def finite_number(v) -> bool:
    """A real number, not a bool (an int to Python, never a size or a time here), that a float holds: an int
    past float's range raised a bare OverflowError in math.isfinite (found in review)."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False



#: (test of a finite number, what it must be): the ranges of the profile's values
POSITIVE = (lambda x: x > 0, "a finite number > 0")
NON_NEGATIVE = (lambda x: x >= 0, "a finite number >= 0")
FRACTION = (lambda x: 0 < x <= 1, "a number in (0, 1]")
WHOLE_POSITIVE = (lambda x: float(x).is_integer() and x >= 1, "a whole number >= 1")

#: ``GpuType``'s numeric fields: sizes, bandwidths and the compute scale are divided by or scale every time, so > 0;
#: ``host_cores`` 0 means the devices share no compute (GPUs), ``weight_read_bytes_per_s`` 0 the HBM rate
GPU_RULES = {"memory_bytes": POSITIVE, "pool_fraction": FRACTION, "h2d_bytes_per_s": POSITIVE,
             "compute_scale": POSITIVE, "hbm_bytes_per_s": POSITIVE, "hbm_achievable_fraction": FRACTION,
             "host_cores": NON_NEGATIVE, "weight_read_bytes_per_s": NON_NEGATIVE}
#: ``CostModel``'s top-level times (seconds) and the fast loader's bandwidth (0: at ``gpu.h2d_bytes_per_s``)
COST_RULES = {"engine_start_s": NON_NEGATIVE, "tp_init_s": NON_NEGATIVE, "activation_s": NON_NEGATIVE,
              "kv_map_s_per_gib": NON_NEGATIVE, "engine_init_s": NON_NEGATIVE,
              "fast_load_bytes_per_s": NON_NEGATIVE, "load_fixed_s": NON_NEGATIVE}
#: ``EngineLimits``'s fields (its own ``__post_init__`` refuses another block size)
LIMIT_RULES = {"max_running_seqs": WHOLE_POSITIVE, "block_size_tokens": WHOLE_POSITIVE,
               "max_model_len_tokens": WHOLE_POSITIVE, "max_batched_tokens": WHOLE_POSITIVE}
#: a profile model entry's sizes, its linear times (seconds; sections of two keys) and its measured tables
MODEL_RULES = {"weight_bytes": POSITIVE, "tp": WHOLE_POSITIVE, "kv_bytes_per_token": WHOLE_POSITIVE}
LINEAR_KEYS = {"prefill_s": ("base_s", "per_token_s"), "decode_step_s": ("base_s", "per_seq_s")}
TABLE_KEYS = {"prefill_table": "prompt tokens", "decode_table": "running sequences"}


def check_value(where: str, value, rule: tuple, fix: str = FIX):
    """``value`` if it is a finite number (not a bool) that passes ``rule``; else the error naming ``where``."""
    test, want = rule
    if not (finite_number(value) and test(value)):
        raise InvalidArgumentError(f"{where} is {value!r}: it must be {want}; {fix}", key=where, value=value)
    return value


#: ``CostModel.colocation_interference``'s rules (costmodel.py documents each)
COLOCATION_INTERFERENCE = ("time-share", "phase", "none")


def check_interference(value) -> str:
    """``value`` if it names one of COLOCATION_INTERFERENCE; else the error naming them."""
    if value not in COLOCATION_INTERFERENCE:
        raise InvalidArgumentError(f"colocation_interference is {value!r}: it must be one of "
                                   f"{', '.join(COLOCATION_INTERFERENCE)}", key="colocation_interference", value=value)
    return value


def check_fields(who: str, values: dict, rules: dict, fix: str) -> None:
    """Each of ``values`` (field -> value) by its rule in ``rules``, the error naming ``who``.field."""
    for k, v in values.items():
        check_value(f"{who}.{k}", v, rules[k], fix)


def section(where: str, d, known) -> dict:
    """``d`` if it is a JSON object whose keys are all in ``known`` (a profile with a typo fails here rather than being
    half-read)."""
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"profile {where} is {d!r} ({type(d).__name__}): it must be an object of "
                                   f"{sorted(known)}; {FIX}", section=where)
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise InvalidArgumentError(f"profile section {where!r} has unknown keys {unknown}; known: {sorted(known)}",
                                   section=where)
    return d


def gpu_section(d) -> dict:
    """The profile's ``gpu`` section, checked, its values as written (``GpuType``'s fields)."""
    d = section("gpu", d, ("name", *GPU_RULES))
    if "name" in d and not isinstance(d["name"], str):
        raise InvalidArgumentError(f"profile gpu.name is {d['name']!r}: it must be a string, e.g. \"H100-80GB\"; "
                                   f"{FIX}", key="gpu.name", value=d["name"])
    check_fields("profile gpu", {k: v for k, v in d.items() if k != "name"}, GPU_RULES, FIX)
    return d


def limits_section(d) -> dict:
    """The profile's ``engine_limits``, checked, as ints."""
    d = section("engine_limits", d, LIMIT_RULES)
    check_fields("profile engine_limits", d, LIMIT_RULES, FIX)
    return {k: int(v) for k, v in d.items()}


def table(where: str, points, x_is: str) -> tuple:
    """A measured table: at least one [x, seconds] point, both finite and >= 0, x strictly ascending (the cost model
    interpolates between neighbours and extrapolates from the last two: found in review, a repeated x was divided
    by a 1e-12 gap, decode_table [[1, 0], [1, 0.01]] gave a 2-sequence step of 1e10 s), as a tuple of float pairs."""
    want = (f"a list of [{x_is}, seconds] points, x strictly ascending (one point per x), e.g. [[1, 0.015], "
            f"[16, 0.02]]")
    if not isinstance(points, (list, tuple)) or not points:
        raise InvalidArgumentError(f"{where} is {points!r}: it must be {want}; {FIX}", key=where, value=points)
    out = []
    for i, p in enumerate(points):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(finite_number(v) and v >= 0 for v in p)):
            raise InvalidArgumentError(f"{where}[{i}] is {p!r}: each point must be [{x_is}, seconds], two finite "
                                       f"numbers >= 0; {FIX}", key=where, value=p)
        if out and p[0] <= out[-1][0]:
            raise InvalidArgumentError(f"{where}[{i}] is {p!r}: {x_is} {p[0]} comes after {out[-1][0]:g}; it must "
                                       f"be {want} (keep one point of a repeated x); {FIX}", key=where, value=p)
        out.append((float(p[0]), float(p[1])))
    return tuple(out)


def model_entry(name: str, m) -> dict:
    """A profile model entry as ``ModelCost`` keywords, each value checked and converted as the cost model holds it."""
    where = f"models.{name}"
    m = section(where, m, (*MODEL_RULES, *LINEAR_KEYS, *TABLE_KEYS))
    kw = {}
    for k, rule in MODEL_RULES.items():
        if k in m:
            v = check_value(f"profile {where}.{k}", m[k], rule)
            kw[k] = float(v) if k == "weight_bytes" else int(v)
    for k, (base, per) in LINEAR_KEYS.items():
        if k in m:
            lin = section(f"{where}.{k}", m[k], (base, per))
            check_fields(f"profile {where}.{k}", lin, {base: NON_NEGATIVE, per: NON_NEGATIVE}, FIX)
            head = k.split("_")[0]  # prefill / decode: ModelCost's field names
            # only the parts given: the other keeps its value (found in review: it was set to 0); a new model's
            # missing part is 0 (CostModel.from_profile)
            for part in (base, per):
                if part in lin:
                    kw[f"{head}_{part}"] = float(lin[part])
    for k, x_is in TABLE_KEYS.items():
        if k in m:
            kw[k] = table(f"profile {where}.{k}", m[k], x_is)
    return kw


def models_section(d) -> dict:
    """The profile's ``models``: model name -> ``ModelCost`` keywords (``model_entry``); None reads as no models."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"profile models is {d!r} ({type(d).__name__}): it must be an object of model "
                                   f"name -> entry; {FIX}", section="models")
    return {name: model_entry(name, m) for name, m in d.items()}
