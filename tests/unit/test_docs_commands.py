"""Every `warmserve ...` command line the markdown documentation shows must parse with the current CLI.

Flags were renamed and removed over months while the docs kept the old spellings; a reader who copies a command
then meets an argparse error. This test extracts the commands (fenced code lines and inline code spans, joined
across `\\` continuations and wrapped lines), expands `a|b` alternatives and `[--opt X]` optional groups, fills
placeholder values (`N`, `PATH`, `<llama-1b>`, `...`) with a value of the flag's type, and parses each with the
parser `warmserve.cli._run` builds, without running anything. `--policy-option [POLICY:]KEY=VALUE` keys and
values go through `policy_config_from_dict`, as the commands do, and a flag argparse expands from a prefix counts
as wrong. Every failure is collected and reported at once. The one config-file example (README's TOML block) is
loaded by test_readme.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import pathlib
import re
import shlex

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, policy_config_from_dict

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Historical records of older trees: their commands ran on the trees they name and are kept as run, not rewritten
#: to today's flags (each file says so in its head).
HISTORICAL = {
    "bench/simulate/HISTORY.md",
}

#: Commands known to fail, kept as written: (file, a piece of the command) -> why. Matched on the command's text,
#: not its line number, so that edits elsewhere in the file do not break the match; an entry that no longer matches
#: a failing command fails the test (it is stale: remove it).
ALLOWED: dict[tuple[str, str], str] = {
    ("bench/simulate/ISSUE11_ROUNDS.md", "--policy-option standby_share=S"):
        "the record of an experiment on an uncommitted patch that added standby_share, measured and not kept "
        "(section 'a standby floor from the forecast peak, measured and not kept'): no tree ever had the option",
}


def doc_files() -> list[pathlib.Path]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").rglob("*.md"))]
    return [p for p in paths if p.relative_to(ROOT).as_posix() not in HISTORICAL]


_COMMAND_WORDS = sorted({w[0] for w in cli.COMMANDS}, key=len, reverse=True)
#: A command inside prose or an inline code span.
_START = re.compile(r"(?:^|(?<=[\s(;&|`]))(?:python3? -m )?warmserve\s+(?=(?:%s)\b)" % "|".join(_COMMAND_WORDS))
#: Where a shell command ends: a pipe, list, redirection or comment.
_SHELL_END = re.compile(r"\s(?:\|(?!\S)|&&|\|\||;|>|2>|&(?!\S)|#).*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
#: A command in a code block starts its shell line (after a prompt, environment assignments or a wrapper, or a
#: `#` that shows it as an alternative: `#   warmserve simulate ...`); a `warmserve ...` elsewhere on the line is a
#: comment's or a tree listing's prose.
_LINE_START = re.compile(r"^\s*(?:#\s+)?(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:(?:nice -n \d+|time|timeout \d+)\s+)*"
                         r"(?:python3? -m )?warmserve\s+(?=(?:%s)\b)" % "|".join(_COMMAND_WORDS))


def extract(text: str) -> list[tuple[int, str, bool]]:
    """(line number, command text, whether a fragment) of every `warmserve COMMAND ...` in fenced code lines and
    inline code spans. A span in prose is a fragment: it may name a flag without its value or leave out a required
    one (`warmserve calibrate --parallel N`); a code block's line is a whole command."""
    found = []
    lines = text.splitlines()
    in_fence = False
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            prose.append((i + 1, ""))
            i += 1
            continue
        if not in_fence:
            prose.append((i + 1, line))
            i += 1
            continue
        start = i
        joined = line
        while joined.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            joined = joined.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        m = _LINE_START.match(joined)
        if m:
            found.append((start + 1, _SHELL_END.sub("", "warmserve " + joined[m.end():]).strip(), False))
    # Inline code spans may wrap over the lines of one paragraph (never over a blank line or a fence).
    paragraph: list[tuple[int, str]] = []
    for number, line in [*prose, (0, "")]:
        if line.strip():
            paragraph.append((number, line))
            continue
        if paragraph:
            found.extend(_spans(paragraph))
        paragraph = []
    return sorted(found)


def _spans(paragraph: list[tuple[int, str]]) -> list[tuple[int, str, bool]]:
    text = "\n".join(line for _, line in paragraph)
    starts = list(itertools.accumulate(len(line) + 1 for _, line in paragraph))
    out = []
    for m in re.finditer(r"(`+)(.+?)\1", text, re.S):
        body = m.group(2).replace("\\|", "|").replace("\n", " ")
        c = _START.search(body)
        if not c:
            continue
        number = paragraph[next(k for k, end in enumerate(starts) if m.start() < end)][0]
        out.append((number, _SHELL_END.sub("", "warmserve " + body[c.end():]).strip(), True))
    return out


_parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}


def parser_for(words: tuple[str, ...]) -> argparse.ArgumentParser:
    """The parser `cli._run` builds for ``words`` (cached: each is built once per test run)."""
    if words not in _parsers:
        module_name, help_ = cli.COMMANDS[words]
        p = argparse.ArgumentParser(prog=f"warmserve {' '.join(words)}", description=help_)
        importlib.import_module(module_name).add_arguments(p)
        _parsers[words] = p
    return _parsers[words]


#: Placeholder values a doc writes where the reader fills in their own: `...`, `<anything>`, an upper-case word.
_PLACEHOLDER = re.compile(r"^(?:\.\.\.|<[^>]*>|[A-Z][A-Z0-9_]*)$")
#: An upper-case letter standing for a part of a value (`paper-P`: paper-conv or paper-code).
_PART = re.compile(r"(?<![A-Za-z])[A-Z](?![A-Za-z])")


def _sample(action: argparse.Action, token: str) -> str:
    """A value ``action`` accepts in place of the placeholder ``token``."""
    if action.choices:
        pattern = re.compile(_PART.sub("[a-z0-9]+", re.escape(token).replace("\\-", "-")) + "$")
        matching = [str(c) for c in action.choices if pattern.match(str(c))]
        return matching[0] if matching else str(next(iter(action.choices)))
    if action.type in (int, float):
        return "1"
    return "x"


def _optional_groups(command: str) -> str:
    """`[--repeats 5]` is an option the reader may add: kept, its brackets removed."""
    return re.sub(r"(?<!\S)\[(-[^\[\]]*)\](?!\S)", r"\1", command)


def expand(command: str) -> list[str]:
    """``command`` with each `a|b` token taken one alternative at a time (the others at their first)."""
    tokens = _optional_groups(command).split(" ")
    alternates = [t.split("|") if "|" in t.strip("|") else [t] for t in tokens]
    variants = {" ".join(a[0] for a in alternates)}
    for k, alts in enumerate(alternates):
        for alt in alts[1:]:
            variants.add(" ".join(alt if j == k else a[0] for j, a in enumerate(alternates)))
    return sorted(variants)


class Skip(Exception):
    """A placeholder that is no flag's value and no elision (`warmserve simulate FILE`): nothing to fill in."""


def _fill(parser: argparse.ArgumentParser, rest: list[str], fragment: bool) -> tuple[list[str], bool]:
    """``rest`` with each placeholder value replaced by one its flag accepts, and whether it is a fragment. A lone
    `...` (and the prose in parentheses after it: `... (the same workload options)`) stands for options given
    elsewhere: dropped, the rest checked as a fragment. A fragment's last flag that wants a value it was not given
    gets one (`--page-mib` named in prose)."""
    flags = parser._option_string_actions
    filled: list[str] = []
    in_parens = False
    for token in rest:
        if in_parens or (token.startswith("(") and filled[-1:] == ["..."]):
            in_parens = not token.endswith(")")
            continue
        if filled[-1:] == ["..."]:
            filled.pop()
            fragment = True
        action = flags.get(filled[-1].split("=", 1)[0]) if filled and filled[-1].startswith("-") else None
        takes_value = action is not None and action.nargs != 0 and "=" not in filled[-1]
        if takes_value and action.dest == "policy_option" and _PLACEHOLDER.match(token):
            filled.pop()  # `--policy-option ...`: options the reader picks, nothing to check
            continue
        if takes_value and (_PLACEHOLDER.match(token) or (action.choices and _PART.search(token))):
            token = _sample(action, token)
        elif _PLACEHOLDER.match(token) and token != "...":
            raise Skip(token)
        filled.append(token)
    if filled[-1:] == ["..."]:
        filled.pop()
        fragment = True
    if fragment and filled and filled[-1] in flags and flags[filled[-1]].nargs != 0:
        filled.append(_sample(flags[filled[-1]], "X"))
    return filled, fragment


def _check_policy_options(options: list[str]) -> str | None:
    """What `policy_config_from_dict` says of the `--policy-option` values (None: they are all known and typed)."""
    from warmserve.policy import POLICY_NAMES

    data = {}
    for item in options:
        head, sep, value = item.partition("=")
        policy, colon, key = head.rpartition(":")  # bench replay's POLICY:KEY=VALUE
        if not sep or not key.strip():
            return f"--policy-option {item!r}: write KEY=VALUE"
        if colon and policy not in POLICY_NAMES:
            return f"--policy-option {item!r}: {policy!r} is not a policy ({', '.join(POLICY_NAMES)})"
        key = key.strip()
        data[key] = str(getattr(PolicyConfig(), key, "")) if _PLACEHOLDER.match(value.strip()) else value.strip()
    try:
        policy_config_from_dict(data, where="--policy-option")
    except InvalidArgumentError as e:
        return f"{type(e).__name__}: {str(e).split('; known:')[0]}"  # the list of every field buries the key
    return None


def check(command: str, fragment: bool = False) -> str | None:
    """None when ``command`` parses (its policy options too), else argparse's or the policy's message."""
    argv = shlex.split(command)[1:]
    words = tuple(argv[:2]) if tuple(argv[:2]) in cli.COMMANDS else tuple(argv[:1])
    if words not in cli.COMMANDS:
        return f"unknown command {' '.join(argv[:2])!r}"
    parser = parser_for(words)
    filled, fragment = _fill(parser, argv[len(words):], fragment)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(filled)
    except SystemExit as e:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
        if e.code == 0 or (fragment and "arguments are required" in message):
            return None  # `--help`; or prose naming one flag of a command that needs others
        return message
    # argparse takes a unique prefix of a flag (`--duration` for `--duration-s`), so a renamed flag can still parse
    # by luck, until a new flag shares the prefix: after a parse, a `--name` argparse did not refuse and does not
    # know is such a prefix
    for token in filled:
        name = token.split("=", 1)[0]
        if name.startswith("--") and name not in parser._option_string_actions:
            return f"{name} is a prefix the CLI expands today, not a flag's name: spell the flag out"
    return _check_policy_options(getattr(args, "policy_option", None) or [])


def collect(files: list[pathlib.Path] | None = None, root: pathlib.Path = ROOT
            ) -> tuple[list[str], list[str], int]:
    """(failures not allow-listed, skipped commands, commands checked) over ``files`` (default: every doc file);
    an allow-list entry that matched no failing command is a failure too."""
    failures, skipped, checked = [], [], 0
    used = set()
    for path in doc_files() if files is None else files:
        rel = path.relative_to(root).as_posix()
        for number, command, fragment in extract(path.read_text()):
            if fragment and (tuple(command.split()[1:]) in cli.COMMANDS or command.split()[1:] in [[g] for g in
                                                                                                    cli.GROUPS]):
                continue  # a command's name in prose ("`warmserve simulate` runs ..."), not a command line
            for variant in expand(command):
                try:
                    message = check(variant, fragment)
                except Skip as s:
                    skipped.append(f"{rel}:{number}: placeholder {s}: {variant}")
                    continue
                except ValueError as e:  # shlex: an unbalanced quote
                    message = f"does not split as a shell line: {e}"
                checked += 1
                allowed = [key for key in ALLOWED if key[0] == rel and key[1] in variant]
                used.update(allowed if message else ())
                if message and not allowed:
                    failures.append(f"{rel}:{number}: {variant}\n    -> {message}")
    if files is None:
        failures += [f"{f}: allow-list entry {piece!r} matches no failing command: remove it"
                     for f, piece in sorted(set(ALLOWED) - used)]
    return failures, skipped, checked


def test_every_documented_command_parses():
    failures, skipped, checked = collect()
    # fewer would mean the extraction broke, not that the docs lost their commands (about 140 in 2026-12)
    assert checked > 100, f"only {checked} commands found"
    assert not failures, (f"{len(failures)} documented command(s) the CLI refuses (file:line: command -> why; "
                          f"{checked} checked, {len(skipped)} skipped):\n" + "\n".join(failures))


def test_a_wrong_flag_or_policy_key_in_a_doc_is_reported_with_its_line(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("Run\n\n```bash\nwarmserve simulate --preset paper-conv \\\n  --no-such-flag 1\n```\n\n"
                   "or `warmserve bench replay --policy warmserve\n--policy-option no_such_key=1`, or\n"
                   "`warmserve simulate --preset paper-cnv|paper-code --seeds 0`.\n")
    failures, skipped, checked = collect([doc], tmp_path)
    assert checked == 4 and not skipped
    assert len(failures) == 3, failures
    assert "README.md:4: " in failures[0] and "unrecognized arguments: --no-such-flag 1" in failures[0]
    assert "README.md:8: " in failures[1] and "unknown keys ['no_such_key']" in failures[1]
    assert "README.md:10: " in failures[2] and "invalid choice: 'paper-cnv'" in failures[2]
