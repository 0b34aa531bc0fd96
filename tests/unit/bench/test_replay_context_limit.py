"""`bench replay` whose prompts and outputs do not fit a checkpoint's context: refused before anything starts.

Found in review: `--checkpoints llama-20m --max-prompt-tokens 6000` ran; the live server answered the longer prompts
with HTTP 400 ("maximum context length is 2048"), counted unanswered with a 20 s P99, while the simulated twin served
them (3.5 s), so live and twin replayed two different workloads."""

from __future__ import annotations

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from replay_harness import replay_args
from warmserve.bench import replay as R
from warmserve.errors import InvalidArgumentError

REPLAY = ["bench", "replay", "--duration-s", "100", "--time-scale", "0.02", "--rate", "3", "--drain-s", "2", "--quiet"]


def test_prompts_past_the_context_are_refused_naming_the_numbers_and_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(R, "run_live", never("the live replay"))
    monkeypatch.setattr(R, "build_workload", never("the workload"))
    rc, _, err = run([*REPLAY, "--checkpoints", "llama-20m", "--max-prompt-tokens", "6000",
                      "--max-output-tokens", "4"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--max-prompt-tokens 6000 + --max-output-tokens 4 = 6004" in err, err
    assert "llama-20m" in err and "2048" in err and "Fix: --max-prompt-tokens 2044 or less" in err, err


def test_the_smallest_context_among_the_checkpoints_binds_and_requests_that_fit_pass():
    # qwen2-30m and llama-90m hold 4096 tokens, llama-20m 2048
    a = replay_args("--checkpoints", "qwen2-30m,llama-20m,llama-90m", "--max-prompt-tokens", "3000",
                    "--max-output-tokens", "16")
    says = (r"3016 tokens, past the 2048-token context of checkpoint llama-20m.*"
            r"Fix: --max-prompt-tokens 2032 or less, or drop llama-20m from --checkpoints")
    with pytest.raises(InvalidArgumentError, match=says) as e:
        R.check_args(a)
    assert e.value.fields["context_tokens"] == 2048 and e.value.fields["checkpoint"] == "llama-20m"
    R.check_args(replay_args("--checkpoints", "qwen2-30m,llama-90m", "--max-prompt-tokens", "3000",
                             "--max-output-tokens", "16"))
    # requests that just fit pass; an --endpoint server serves its own models, whose contexts the bench does not know
    R.check_args(replay_args("--checkpoints", "llama-20m", "--max-prompt-tokens", "2044", "--max-output-tokens", "4"))
    R.check_args(replay_args("--endpoint", "http://127.0.0.1:9", "--served-names", "m", "--checkpoints", "llama-20m",
                             "--max-prompt-tokens", "6000"))


def test_an_output_cap_that_fills_the_context_alone_names_both_flags():
    a = replay_args("--checkpoints", "llama-20m", "--max-prompt-tokens", "8", "--max-output-tokens", "2048")
    with pytest.raises(InvalidArgumentError, match=r"--max-output-tokens below 2048"):
        R.check_args(a)
