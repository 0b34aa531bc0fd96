import argparse
import time

import numpy as np
import pytest

from warmserve.controller import serve
from warmserve.controller.history_file import read_history
from warmserve.errors import InvalidArgumentError


def parse(*argv):
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    return p.parse_args(list(argv))


def test_flags_override_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("WARMSERVE_API_KEY", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text("models: [a]\ncontroller: {policy: shared}\nserver: {port: 1234}\n")
    cfg = serve.build_config(parse("--config", str(f), "--port", "0", "--policy", "autoscale", "--model",
                                   "/x/m1=first", "--model", "/x/m2", "--devices", "cpu:0,cpu:1", "--bind",
                                   "tcp://0.0.0.0:5555"))
    assert [(m.path, m.name) for m in cfg.models] == [("/x/m1", "first"), ("/x/m2", "m2")]
    assert cfg.server.port == 0 and cfg.controller.policy == "autoscale" and cfg.devices == ("cpu:0", "cpu:1")
    assert cfg.controller.bind == "tcp://0.0.0.0:5555" and cfg.server.api_key == ""
    f.write_text("models: [a]\npolicy: {instance_capacity: 8}\nengine: {max_batch_tokens: 512}\n")
    cfg = serve.build_config(parse("--config", str(f), "--window-s", "30", "--policy-option", "min_lifetime_s=2",
                                   "--max-num-seqs", "4", "--cpu-worker-threads", "1", "--worker-page-mib", "32"))
    pc = cfg.controller.policy_config
    assert (pc.instance_capacity, pc.window_s, pc.min_lifetime_s) == (8, 30.0, 2.0)  # flags over the file's table
    assert (cfg.engine.max_num_seqs, cfg.engine.max_batch_tokens, cfg.cpu_worker_threads) == (4, 512, 1)
    assert cfg.worker_page_bytes == 32 << 20 and serve.build_config(parse()).worker_page_bytes == 0  # 0: by device
    monkeypatch.setenv("WARMSERVE_API_KEY", "k")
    assert serve.build_config(parse()).server.api_key == "k"
    assert serve.build_config(parse()).models == ()  # the demo models are chosen when serving starts


#: A window start of yesterday (history starts are Unix times of the last year)
T0 = int(time.time()) // 86400 * 86400 - 86400


def test_a_model_folder_with_an_equals_sign_is_taken_whole(tmp_path, monkeypatch):
    """Found in review: --model split at the first "=", so a training output's step=100 folder could not be served
    (its path read /…/step, named "100"). An existing folder is taken whole; PATH=NAME still splits where PATH is a
    folder, or at the first "=" for a path only a remote worker has."""
    monkeypatch.delenv("WARMSERVE_API_KEY", raising=False)
    step = tmp_path / "lr=1e-4" / "step=100"
    step.mkdir(parents=True)
    cfg = serve.build_config(parse("--port", "0", "--model", str(step), "--model", f"{step}=mine",
                                   "--model", "/remote/a=b=c"))
    assert [(m.path, m.name) for m in cfg.models] == [(str(step), "step=100"), (str(step), "mine"),
                                                      ("/remote/a", "b=c")]


def test_history_csv_and_json(tmp_path):
    (tmp_path / "h.csv").write_text(f"model,window_start_s,avg,peak\nb,{T0 + 600},2,5\na,{T0},1,3\n"
                                    f"a,{T0 + 300},1.5,4\n")
    h = read_history(str(tmp_path / "h.csv"))
    assert sorted(h) == ["a", "b"]
    np.testing.assert_array_equal(h["a"][0], [T0, T0 + 300])
    np.testing.assert_array_equal(h["a"][2], [3, 4])
    (tmp_path / "h.json").write_text('{"a": {"window_start_s": [%d, %d], "avg": [1, 1.5], "peak": [3, 4]}}'
                                     % (T0, T0 + 300))
    j = read_history(str(tmp_path / "h.json"))
    np.testing.assert_array_equal(j["a"][1], h["a"][1])
    (tmp_path / "bad.csv").write_text("model,avg\na,1\n")
    with pytest.raises(ValueError, match="header lacks window_start_s, peak"):
        read_history(str(tmp_path / "bad.csv"))
    with pytest.raises(InvalidArgumentError, match="does not exist"):  # typed (it was a bare FileNotFoundError)
        read_history(str(tmp_path / "none.csv"))


@pytest.mark.parametrize("text, says", [
    ('{"a": {"window_start_s": [0], "peak": [3]}}', "model 'a' is not"),  # no avg: a bare KeyError before
    ('[{"a": 1}]', "holds JSON list"),  # AttributeError before
    ('{"a": [1, 2]}', "model 'a' is not"),
    ('{"a": {"window_start_s": [0, 1], "avg": ["x", 1], "peak": [3, 4]}}', "model 'a' is not"),
    ('{"a": {"window_start_s": [0, 1], "avg": [1], "peak": [3, 4]}}', "different lengths"),
    ('{"a": 1\n', "not valid JSON"),  # a bare JSONDecodeError, no file named, before
])
def test_a_malformed_json_history_is_one_error_naming_the_file_and_its_shape(tmp_path, text, says):
    (tmp_path / "h.json").write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        read_history(str(tmp_path / "h.json"))
    assert str(tmp_path / "h.json") in str(e.value)


@pytest.mark.parametrize("rows, says", [
    # forecast inf for its slot: every tick there crashed, daily
    (f"a,{T0},inf,3", "infinite, negative or implausible"),
    (f"a,{T0},1,-2", "infinite, negative or implausible"),
    (f"a,{T0 * 1000},1,3", "Unix times in seconds"),  # milliseconds: the history was sized for 190,000 years
    (f"a,{T0 + 3 * 86400},1,3", "more than a day ahead of now"),  # days ahead (said "none ahead of now" before)
], ids=["inf", "negative", "milliseconds", "future"])
def test_a_history_of_impossible_loads_or_times_is_refused_naming_the_model(tmp_path, rows, says):
    """Found in review (forecasting): each was taken as it was."""
    (tmp_path / "h.csv").write_text(f"model,window_start_s,avg,peak\na,{T0 - 300},1,2\n{rows}\n")
    with pytest.raises(ValueError, match=says) as e:
        read_history(str(tmp_path / "h.csv"))
    assert "model 'a'" in str(e.value)
    (tmp_path / "ok.csv").write_text(f"model,window_start_s,avg,peak\na,{T0},nan,nan\n")  # unknown: fine
    assert np.isnan(read_history(str(tmp_path / "ok.csv"))["a"][1]).all()


def test_a_history_counted_from_zero_is_refused(tmp_path):
    """Seconds from the trace's start, not Unix times: the policy's clock went to 1970 (found in review)."""
    (tmp_path / "h.csv").write_text("model,window_start_s,avg,peak\na,0,1,3\na,300,1,3\n")
    with pytest.raises(ValueError, match="Unix times in seconds"):
        read_history(str(tmp_path / "h.csv"))


def test_rows_older_than_a_year_are_left_out_with_a_warning(tmp_path, caplog):
    """Found in review of the check above: a file that had grown past a year stopped the controller starting."""
    old = T0 - 400 * 86400
    (tmp_path / "h.csv").write_text(f"model,window_start_s,avg,peak\na,{old},1,2\na,{T0},3,4\n")
    with caplog.at_level("WARNING", logger="warmserve.controller"):
        h = read_history(str(tmp_path / "h.csv"))
    np.testing.assert_array_equal(h["a"][0], [T0])
    assert any("older than 366 days left out" in r.getMessage() for r in caplog.records)


def test_the_policy_refuses_an_infinite_or_negative_history_too():
    from warmserve.errors import InvalidArgumentError
    from warmserve.policy import make_policy
    from warmserve.policy.state import ModelInfo

    models = [ModelInfo("a", 1 << 30, 1, 1 << 19)]
    for bad in (np.inf, -1.0):
        with pytest.raises(InvalidArgumentError, match="infinite, negative or past"):
            make_policy("warmserve", models=models, history={"a": ([0.0, 300.0], [1.0, bad], [2.0, 2.0])})


def test_an_empty_api_key_in_the_environment_keeps_the_files_key(tmp_path, monkeypatch):
    """Found in review: WARMSERVE_API_KEY="" (a common container default) replaced the file's key with none, and
    the server ran without authentication. Order: flag > non-empty environment > file."""
    f = tmp_path / "c.toml"
    f.write_text('[server]\napi_key = "from-file"\n')
    monkeypatch.setenv("WARMSERVE_API_KEY", "")
    assert serve.build_config(parse("--config", str(f))).server.api_key == "from-file"
    monkeypatch.setenv("WARMSERVE_API_KEY", "from-env")
    assert serve.build_config(parse("--config", str(f))).server.api_key == "from-env"
    # An empty flag is refused, not taken as "no key" over the file's and the environment's (found in review: the
    # README's --api-key "$KEY" with KEY unset turned authentication off): test_security_review_api_key.py
    with pytest.raises(InvalidArgumentError, match="--api-key"):
        serve.build_config(parse("--config", str(f), "--api-key", ""))


@pytest.mark.parametrize("argv, flag", [
    (["--port", "-1"], "--port"), (["--max-num-seqs", "-1"], "--max-num-seqs"),
    (["--max-kv-blocks", "-1"], "--max-kv-blocks"), (["--remote-workers", "-1"], "--remote-workers"),
    (["--cpu-worker-threads", "-3"], "--cpu-worker-threads"),
])
def test_a_config_refusal_of_a_flags_value_names_the_flag_first(argv, flag, monkeypatch):
    """Found in review: `serve --port -1` said "ServerConfig.port must be in 0-65535", naming no flag."""
    monkeypatch.delenv("WARMSERVE_API_KEY", raising=False)
    with pytest.raises(InvalidArgumentError) as e:
        serve.build_config(parse(*argv))
    assert e.value.message.startswith(f"{flag}: ") and e.value.flag == flag, e.value.message
    assert "-1" in e.value.message or "-3" in e.value.message  # the value given, still said


def test_a_config_files_value_is_refused_in_the_files_words(tmp_path, monkeypatch):
    monkeypatch.delenv("WARMSERVE_API_KEY", raising=False)
    f = tmp_path / "c.yaml"
    f.write_text("models: [a]\nserver: {port: -1}\n")
    with pytest.raises(InvalidArgumentError) as e:
        serve.build_config(parse("--config", str(f), "--max-num-seqs", "4"))
    assert "port" in e.value.message and not e.value.message.startswith("--"), e.value.message
