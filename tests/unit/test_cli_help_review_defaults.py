"""What `warmserve COMMAND --help` says about defaults and ranges, against what the commands do.

Each command's parser is built as cli.py builds it (nothing run). Found in review (2026-12-06): `simulate --models`
gave no default for the artifact presets (4, not the 7 it named), `simulate --cold-start-s` said "default 14" where a
--profile's own engine_init_s is used, `serve --worker-page-mib 3` was refused in bytes ("got 3145728") naming
ClusterConfig's field rather than the flag, and `bench engine --batches` had no help at all.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from types import SimpleNamespace

import pytest

from warmserve import cli


def _parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for words, (module_name, help_) in cli.COMMANDS.items():
        parser = argparse.ArgumentParser(prog="warmserve " + " ".join(words), description=help_)
        importlib.import_module(module_name).add_arguments(parser)
        out[" ".join(words)] = parser
    return out


PARSERS = _parsers()


def _options():
    for command, parser in PARSERS.items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield command, parser, action


def _help(command: str, flag: str) -> str:
    """The help of ``flag`` as --help prints it (%(default)s expanded), on one line."""
    parser = PARSERS[command]
    action = next(a for a in parser._actions if flag in a.option_strings)
    return " ".join(parser._get_formatter()._expand_help(action).split())


#: "(default X)" statements that describe the argparse default in words rather than repeat it; each must still be
#: there (a stale entry fails), so that the general check below skips only these.
DESCRIBED_DEFAULTS = {("simulate", "--policy"): "all"}

_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?$")


def test_a_default_stated_in_help_is_the_options_default():
    """For every option with an argparse default, a "(default X)" in its help where X is a number, a list of
    numbers or one word is that default: the general guard against a default changed on one side only."""
    checked, wrong = 0, []
    for command, parser, action in _options():
        if action.default is None or isinstance(action.default, bool) or action.default == [] or not action.help:
            continue  # None: the value comes from a config class or the command's code (the table below)
        text = " ".join(parser._get_formatter()._expand_help(action).split())
        for m in re.finditer(r"\(default:? ([^;,)]+)", text):
            stated = m.group(1).strip()
            if DESCRIBED_DEFAULTS.get((command, action.option_strings[-1])) == stated:
                continue
            words = stated.split()
            default = action.default
            if isinstance(default, list) and all(_NUMBER.match(w) for w in words):
                ok = [float(w) for w in words] == [float(x) for x in default]
            elif isinstance(default, (int, float)) and _NUMBER.match(words[0]):
                ok = float(words[0]) == float(default)  # "0.5", "0: off" (what follows says what it means)
            elif isinstance(default, str) and len(words) == 1:
                ok = stated == default
            else:
                continue  # words about the value ("per model"), not the value
            checked += 1
            if not ok:
                wrong.append(f"{command} {action.option_strings[-1]}: help says default {stated!r}, "
                             f"argparse's is {default!r}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 12  # the check reaches the options it is meant for (14 on 2026-12-06)
    for (command, flag), stated in DESCRIBED_DEFAULTS.items():
        assert f"(default: {stated})" in _help(command, flag), (command, flag)


def _config_defaults():
    """(command, flag, what its help must say): options whose argparse default is None, so that the default is a
    config class's field or a constant of the command's code; the text is built from that field or constant."""
    from warmserve.bench.switch import cache_threads
    from warmserve.config import ClusterConfig, ControllerConfig, ServerConfig
    from warmserve.geometry import GPU_PAGE_BYTES, PAGE_BYTES
    from warmserve.memory.cache_files import HostCacheConfig
    from warmserve.policy.config import PolicyConfig
    from warmserve.protocol import EngineConfig
    from warmserve.sim import presets
    from warmserve.sim.cli import DEFAULT_COLD_START_BAND
    from warmserve.sim.cli_checks import DEFAULT_SEARCH_ITERS, DEFAULT_SLO_TARGET
    from warmserve.sim.costmodel import ENGINE_INIT_S
    from warmserve.worker.link import DEFAULT_MAX_QUEUED_BYTES
    from warmserve.worker.main import DEFAULT_BIND

    gpu_mib, cpu_mib = GPU_PAGE_BYTES >> 20, PAGE_BYTES >> 20
    scale = inspect.signature(presets.scale_preset).parameters
    paper = inspect.signature(presets.paper_preset).parameters
    threads = {cuda: cache_threads(SimpleNamespace(cache_threads=None), SimpleNamespace(cuda=cuda))
               for cuda in (True, False)}
    return [
        ("serve", "--host", f"(default {ServerConfig.host};"),
        ("serve", "--port", f"(default {ServerConfig.port};"),
        ("serve", "--cpu-workers", f"(default {ClusterConfig.cpu_workers})"),
        # "": the private socket (hub_sockets.private_bind), which the help describes
        ("serve", "--bind", "(default: a socket only this user's processes on " if not ControllerConfig.bind
         else f"(default {ControllerConfig.bind}:"),
        ("serve", "--policy", f"(default {ControllerConfig.policy})"),
        ("serve", "--window-s", f"(default {PolicyConfig.window_s:g})"),
        ("serve", "--max-kv-blocks", f"(default {EngineConfig().max_kv_blocks}:"),
        ("serve", "--host-cache-gib", f"default {ClusterConfig.host_cache_bytes}: off"),
        ("serve", "--host-cache-dir", f"(default {HostCacheConfig.root})"),
        ("serve", "--worker-page-mib", f"{gpu_mib} when every worker is on a GPU, else {cpu_mib};"),
        ("worker", "--bind", f"(default {DEFAULT_BIND}:"),
        ("worker", "--page-mib", f"(default {gpu_mib} on cuda, {cpu_mib} on cpu)"),
        ("worker", "--max-queued-mib", f"(default {DEFAULT_MAX_QUEUED_BYTES >> 20})"),
        ("worker", "--host-cache-dir", f"{HostCacheConfig.root})"),
        ("simulate", "--models", f"(default: {presets.PAPER_N_MODELS} for the paper presets, "
                                 f"{presets.ARTIFACT_N_MODELS} for the artifact ones, {presets.SCALE_N_MODELS} for "
                                 f"servegen and scale)"),
        ("simulate", "--cold-start-s", f"(default: a --profile's engine_init_s, else {ENGINE_INIT_S:g},"),
        ("simulate", "--rate", f"(default: {presets.PRESET_RATE_RPS:g} for the paper and artifact presets"),
        ("simulate", "--alpha", f"(default: {presets.PAPER_ALPHA:g} for paper presets, {presets.ARTIFACT_ALPHA:g} "
                                f"for artifact ones)"),
        ("simulate", "--start-hour", f"(default {scale['start_hour'].default:g})"),
        ("simulate", "--history-days", f"(default: {scale['history_days'].default} for servegen"),
        ("simulate", "--history-days", f"; {paper['history_days'].default} for the paper and artifact presets"),
        ("simulate", "--search-iters", f"default {DEFAULT_SEARCH_ITERS})"),
        ("simulate", "--slo-target", f"(default {DEFAULT_SLO_TARGET})"),
        ("simulate", "--cold-start-band", f"(default {DEFAULT_COLD_START_BAND}:"),
        ("bench switch", "--cache-threads", f"(default: {threads[True]} on cuda, {threads[False]} on host)"),
    ]


@pytest.mark.parametrize("command,flag,says", _config_defaults(), ids=[f"{c} {f}" for c, f, _ in _config_defaults()])
def test_a_default_from_a_config_class_or_constant_is_the_one_stated(command, flag, says):
    assert says in _help(command, flag)


def test_the_cold_start_default_is_a_profiles_own():
    """What the --cold-start-s help now says: a --profile brings its engine_init_s (a calibrated CPU profile's is
    seconds, not vLLM's 14)."""
    import os

    from warmserve.sim.costmodel import ENGINE_INIT_S, CostModel

    profile = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "replay", "profile_cpu.json")
    base = CostModel.for_gpu("H100-80GB")
    assert base.engine_init_s == ENGINE_INIT_S
    assert CostModel.from_profile(profile, base=base).engine_init_s != ENGINE_INIT_S


def test_every_option_says_what_it_does():
    bare = [f"{command} {a.option_strings[-1]}" for command, _, a in _options() if not (a.help or "").strip()]
    assert not bare, bare


def _serve_config(*argv):
    from warmserve.controller import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return serve.build_config(parser.parse_args(list(argv)))


@pytest.mark.parametrize("mib", ["3", "-2", "1"])
def test_serve_refuses_a_worker_page_outside_its_help_naming_the_flag_in_mib(mib):
    from warmserve.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as e:
        _serve_config("--worker-page-mib", mib)
    message = str(e.value)
    assert "--worker-page-mib" in message and f"got {mib}" in message and str(int(mib) << 20) not in message
    assert "\n" not in message


def test_serve_takes_the_worker_pages_its_help_names():
    assert _serve_config("--worker-page-mib", "2").worker_page_bytes == 2 << 20
    assert _serve_config("--worker-page-mib", "32").worker_page_bytes == 32 << 20
    assert _serve_config("--worker-page-mib", "0").worker_page_bytes == 0  # "or 0": the default by device
