from warmserve import errors
from warmserve.cli import COMMANDS, main


def test_errors_round_trip_the_wire_with_their_numbers():
    err = errors.OutOfMemoryError("needs 3.0 GiB, 1.0 GiB free", asked_bytes=3 << 30, free_bytes=1 << 30, total_bytes=8 << 30)
    back = errors.from_wire(err.to_wire())
    assert type(back) is errors.OutOfMemoryError
    assert isinstance(back, MemoryError)
    assert (back.asked_bytes, back.free_bytes, back.total_bytes) == (3 << 30, 1 << 30, 8 << 30)
    assert str(back) == "needs 3.0 GiB, 1.0 GiB free"


def test_caller_mistakes_are_value_errors():
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.PromptTooLongError, ValueError)
    assert str(errors.UnknownModelError("no model 'x'")) == "no model 'x'"


def test_fmt_bytes():
    assert errors.fmt_bytes(3.2 * 2**30) == "3.2 GiB"
    assert errors.fmt_bytes(512) == "512 B"


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for words in COMMANDS:
        assert " ".join(words) in out
    assert main(["nonsense"]) == 2
