"""Errors a user meets in the controller and worker packages carry the value or the numbers behind them and the fix.
Found in review: a completion's ``"prompt": []`` and a chat's ``"messages": []`` were refused with "must not be
empty" and nothing to send; ``[[]]``, ``[1, 2.5]`` and an id past the vocabulary named neither the item nor the ids
to send; ``Cluster.generate(model)`` with no prompt, and ``prompt=[]``, read "the prompt is empty after
tokenization"; a ``--history`` JSON with lists of unequal length did not say the lengths; a checkpoint missing on a
worker's machine and ``warmserve worker --curve-clients-dir`` naming no folder gave no fix. Each still raises its
class (InvalidArgumentError: a ValueError, a 400 over HTTP whose ``param`` names the field)."""

from __future__ import annotations

import argparse
import json

import pytest

from warmserve.controller.frontend import prepare
from warmserve.controller.history_file import read_history
from warmserve.controller.openai_api import error_from_exception, parse_chat, parse_completion
from warmserve.errors import InvalidArgumentError


def _completion(model, tmp_path, prompt):
    parse_completion(json.dumps({"model": "m", "prompt": prompt}).encode())


def _empty_prompt(model, tmp_path):
    _completion(model, tmp_path, [])


def _empty_batch(model, tmp_path):
    _completion(model, tmp_path, [[]])


def _empty_messages(model, tmp_path):
    parse_chat(json.dumps({"model": "m", "messages": []}).encode())


def _float_id(model, tmp_path):
    prepare(model, [1, 2.5], max_tokens=1)  # an HTTP prompt's ids reach this as they are


def _id_past_vocab(model, tmp_path):
    prepare(model, [1, model.tokenizer.vocab_size + 7], max_tokens=1)


def _no_prompt(model, tmp_path):
    prepare(model, None, max_tokens=1)  # Cluster.generate(model), neither prompt nor messages


def _ids_empty(model, tmp_path):
    prepare(model, [], max_tokens=1)  # Cluster.generate(model, prompt=[])


def _history_lengths(model, tmp_path):
    path = tmp_path / "h.json"  # `warmserve serve --history h.json`
    path.write_text(json.dumps({"m": {"window_start_s": [0, 60, 120], "avg": [1.0, 2.0], "peak": [1.0, 2.0]}}))
    read_history(str(path))


def _worker_no_checkpoint(model, tmp_path):
    from warmserve.worker import InProcessWorker

    with InProcessWorker("cpu", memory_gib=0.05) as w:  # as a remote worker given the controller's path
        w.prewarm(str(tmp_path / "llama-on-the-controller-only"))


def _curve_clients_dir(model, tmp_path):
    from warmserve.worker.main import add_arguments, check_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    check_args(p.parse_args(["--curve-clients-dir", str(tmp_path / "nope")]))


# (reproducer, param over HTTP (None: not an HTTP error), words the message must hold)
def _config_without_models(model, tmp_path):
    import warmserve

    warmserve.Cluster(config=warmserve.ClusterConfig(models=()))  # the fix is the config's, not the arguments'


CASES = {
    "completion prompt []": (_empty_prompt, "prompt", ["must not be empty", "got []", '"prompt": "Hello"']),
    "completion prompt [[]]": (_empty_batch, "prompt", ["got [[]]", "at least one token id", "[[1, 2, 3]]"]),
    "chat messages []": (_empty_messages, "messages", ["must not be empty", "got []", '"role": "user"']),
    "token id 2.5": (_float_id, "prompt", ["list of token ids", "prompt[1] = 2.5 (float)", "JSON integer"]),
    "token id past the vocabulary": (_id_past_vocab, "prompt", ["outside the vocabulary", "(prompt[1])",
                                                                "send ids from 0 to"]),
    "Cluster.generate without a prompt": (_no_prompt, "prompt", ["no prompt given", "prompt=", "messages="]),
    "Cluster.generate(prompt=[])": (_ids_empty, "prompt", ["no token ids", "empty list", "at least one token id"]),
    "--history lists of unequal length": (_history_lengths, None, ["window_start_s [3]", "avg [2]",
                                                                   "one number per window"]),
    "checkpoint missing on the worker": (_worker_no_checkpoint, None, ["config.json missing", "host ",
                                                                       "copy the checkpoint to that path"]),
    "worker --curve-clients-dir missing": (_curve_clients_dir, None, ["no such directory", "create it",
                                                                      "public key"]),
    "Cluster(config=ClusterConfig(models=()))": (_config_without_models, None, ["at least one model",
                                                                               "config=ClusterConfig(models="]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_error_names_the_value_and_the_fix(case, model, tmp_path):
    reproduce, param, words = CASES[case]
    with pytest.raises(InvalidArgumentError) as ei:
        reproduce(model, tmp_path)
    message = str(ei.value)
    for w in words:
        assert w in message, (w, message)
    assert isinstance(ei.value, ValueError)
    if param is not None:
        if case == "token id past the vocabulary":
            assert str(model.tokenizer.vocab_size + 7) in message and str(model.tokenizer.vocab_size - 1) in message
        status, body = error_from_exception(ei.value)  # the OpenAI shape, the field named
        assert status == 400 and body["error"]["param"] == param and body["error"]["message"] == message
