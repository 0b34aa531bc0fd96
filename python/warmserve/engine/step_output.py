"""What an engine step reports for each request (``Engine.step``): a module of its own so that engine.py, which
re-exports it, stays within its size."""

from __future__ import annotations

from dataclasses import dataclass

from warmserve.errors import WarmServeError
from warmserve.protocol import TokenLogprobs


@dataclass
class StepOutput:
    """What one step produced for one request."""

    request_id: str
    #: Tokens new in this step (empty for an abort).
    token_ids: list[int]
    finished: bool
    #: "stop" (EOS or a stop token), "length" (max_tokens), "abort" or "error" (``error``); None while running.
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    #: The EOS or stop token id that ended the request, if any.
    stop_reason: int | None = None
    #: One per token of token_ids when the request asked for logprobs (SamplingParams.logprobs), else empty.
    logprobs: list[TokenLogprobs] | None = None
    #: With a request's first token, when it asked for prompt_logprobs: one per prompt token after the first.
    prompt_logprobs: list[TokenLogprobs] | None = None
    #: Why it ended without its tokens (finish_reason "error"): a worker answers the request with this error.
    error: WarmServeError | None = None
