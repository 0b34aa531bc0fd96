"""Every policy by name, registered once: the policy class and the ``PolicyConfig`` fields the name sets."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

from warmserve.errors import InvalidArgumentError
from warmserve.policy.calendar import Calendar
from warmserve.policy.baselines import StaticPolicy
from warmserve.policy.config import PolicyConfig, parse_policy_options
from warmserve.policy.core import Policy
from warmserve.policy.state import ModelInfo


@dataclass(frozen=True)
class PolicyVariant:
    """One named policy."""

    #: The class that decides (``Policy`` or a subclass).
    cls: type
    #: PolicyConfig fields this name sets, over whatever configuration the caller gives.
    overrides: dict = field(default_factory=dict)
    #: One line for help texts.
    doc: str = ""


POLICIES: dict[str, PolicyVariant] = {
    "warmserve": PolicyVariant(Policy, {}, "forecast prewarming, laminar placement, KV reservation (the paper)"),
    "autoscale": PolicyVariant(Policy, dict(prewarm=False, kv_reservation=False, warm_engine=False,
                                            coserve_tpot_s=0.0, route_prefill_overflow=False,
                                            scale_in_floor_now=False, migrate_max_in_flight=0,
                                            colocate_when_oversubscribed=False, last_instance_hold_s=0.0),
                               "reactive autoscaling, no prewarming, engine started cold"),
    "shared": PolicyVariant(StaticPolicy, dict(prewarm=False, kv_reservation=False),
                            "static colocation of every model with fixed KV shares"),
    "dedicated": PolicyVariant(StaticPolicy, dict(prewarm=False, kv_reservation=False), "fixed GPUs per model"),
    "no-kv-reservation": PolicyVariant(Policy, dict(kv_reservation=False), "ablation: KV caches never shrink"),
    "round-robin-placement": PolicyVariant(Policy, dict(placement="round-robin", evict_for_placement=False),
                                           "ablation: round-robin instead of laminar placement"),
    "reactive": PolicyVariant(Policy, dict(forecast=False), "ablation: plan from the last window, no forecast"),
    "engine-prewarm-only": PolicyVariant(Policy, dict(prewarm=False),
                                         "ablation: engines started ahead, no weights prewarmed"),
}

POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def fixed_options(variant: PolicyVariant) -> dict:
    """The PolicyConfig fields a name fixes: its ``overrides``, and consolidate=False where they turn co-serving off
    (coserve_tpot_s=0): consolidating moves quiet models onto co-serving hosts, which such a policy never has. Found
    in review: `warmserve simulate --policy-option consolidate=true` ran warmserve, then aborted building autoscale,
    advising a coserve_tpot_s that autoscale overrides. `warmserve serve` refuses the combination itself, before
    any policy is built (``controller.serve.check_policy_fixes``)."""
    fixed = dict(variant.overrides)
    if fixed.get("coserve_tpot_s", 1.0) <= 0:
        fixed.setdefault("consolidate", False)
    return fixed


def make_policy(name: str, *, models: list[ModelInfo], config: PolicyConfig | None = None, history=None,
                calendar: Calendar | None = None) -> Policy:
    """The policy called ``name`` (one of POLICY_NAMES) over ``models``; ``config`` is adjusted by the name
    (e.g. `autoscale` turns prewarming off). ``history``: model -> (window_start_s, avg, peak) arrays.
    ``calendar``: the days the load follows (``policy.calendar``; default: 86400 s of the driver's clock)."""
    variant = POLICIES.get(name)
    if variant is None:
        raise InvalidArgumentError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}", policy=name)
    if not models:
        raise InvalidArgumentError(f"make_policy({name!r}) got models={models!r}: it needs at least one ModelInfo "
                                   "(fix: pass the served models, e.g. warmserve.sim.inputs.model_infos(...))",
                                   policy=name)
    cfg = replace(config or PolicyConfig(), **fixed_options(variant))
    return variant.cls(name, list(models), cfg, history, calendar)



def shadowed_options(given: PolicyConfig, keys: dict[str, str], policies) -> list[str]:
    """One sentence per option in ``keys`` (option -> how it was given: ``--policy-option``, a config file's
    table) that a policy in ``policies`` does not take: one its class does not read (``IGNORED_OPTIONS``), or one
    its name fixes (``fixed_options``) to a value other than ``given``'s. Options set to the fixed value say nothing.
    `warmserve simulate` and `warmserve serve` both say these (found in review: serve ran `autoscale` with
    prewarm=False under --policy-option prewarm=true, without a word)."""
    out = []
    for name in policies:
        variant = POLICIES.get(name)
        if variant is None:
            continue
        for key, why in getattr(variant.cls, "IGNORED_OPTIONS", {}).items():
            if key in keys:  # found in review: shared and dedicated ran uncapped under route_cap_per_instance=2
                out.append(f"{keys[key]} {key} does not reach {name}: {why}")
        for key, value in fixed_options(variant).items():
            if key in keys and getattr(given, key) != value:
                out.append(f"{keys[key]} {key}={getattr(given, key)} does not reach {name}, which fixes "
                           f"{key}={value}")
    return out


def note_shadowed_options(options, policies, command: str = "warmserve simulate") -> None:
    """Say on stderr, as ``command``, which ``--policy-option KEY=VALUE`` values ``options`` a policy in
    ``policies`` does not take (``shadowed_options``)."""
    given = parse_policy_options(options)
    keys = {o.split("=", 1)[0].strip(): "--policy-option" for o in options}
    for line in shadowed_options(given, keys, policies):
        print(f"{command}: {line}", file=sys.stderr)
