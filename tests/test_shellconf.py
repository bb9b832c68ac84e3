"""The shell-assignment parser: every form the original's users write, and
every shell feature that must be refused rather than run."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spdu_cli.shellconf import ShellSyntaxError, parse


def no_lookup(name, line, seen):
    raise ShellSyntaxError(line, f"${name} is not set", "set it above")


def values(text, lookup=no_lookup):
    return {a.key: a.value for a in parse(text, lookup)}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a=b", "b"),
        ('a="b c"', "b c"),
        ("a='b c'", "b c"),
        ("a=", ""),
        ('a=""', ""),
        ("a=b # trailing comment", "b"),
        ('a="b # not a comment"', "b # not a comment"),
        ("a=b#c", "b#c"),  # '#' inside a word is not a comment in sh
        ("a=x'y z'\"w\"", "xy zw"),
        ('a="say \\"hi\\""', 'say "hi"'),
        ("a='it''s'", "its"),
        ("a=b\\ c", "b c"),
        ('a="\\$x"', "$x"),
        ("a='$x `y` $(z)'", "$x `y` $(z)"),
        ('a="100$"', "100$"),
        ("a=*", "*"),  # no globbing in assignments
        ("a=b\\\nc", "bc"),
        ('a="one\ntwo"', "one\ntwo"),
        ("a=1\t# tab before comment", "1"),
        ("  a=indented", "indented"),
    ],
)
def test_value_forms(text, expected):
    assert values(text) == {"a": expected}


def test_whole_file_with_shebang_comments_and_blanks():
    text = "#!/bin/sh\n# comment\n\n   \nx=1\n  # indented comment\ny='2'\r\nz=\"3\"\n"
    assert values(text) == {"x": "1", "y": "2", "z": "3"}


def test_line_numbers_count_multiline_values():
    got = parse('a="1\n2"\nb=3\n', no_lookup)
    assert [(a.key, a.line) for a in got] == [("a", 1), ("b", 3)]


def test_references_see_earlier_keys_in_order():
    text = 'domain=example.org\nmailFrom="spdu@${domain}"\nx=$domain/$domain\ndomain=other\n'
    v = values(text)
    assert v["mailFrom"] == "spdu@example.org"
    assert v["x"] == "example.org/example.org"
    assert v["domain"] == "other"


def test_references_to_unset_keys_go_to_lookup_with_what_is_set():
    calls = []

    def lookup(name, line, seen):
        calls.append((name, line, dict(seen)))
        return "from-main"

    assert values("a=1\nb=${base}x\n", lookup) == {"a": "1", "b": "from-mainx"}
    assert calls == [("base", 2, {"a": "1"})]


def test_single_quotes_do_not_expand():
    assert values("a='${x}'") == {"a": "${x}"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("a=`id`", "command substitution"),
        ('a="`id`"', "command substitution"),
        ("a=$(id)", "command substitution"),
        ('a="$(id)"', "command substitution"),
        ("a=$((1+2))", "command substitution"),
        ("a=b; rm -rf /", "operator"),
        ("a=b && id", "operator"),
        ("a=b|id", "operator"),
        ("a=b >/tmp/x", "operator"),
        ("a=b c", "unquoted space"),
        ("rm -rf /", "not an assignment"),
        ("export a=b", "not an assignment"),
        (". /etc/other.conf", "not an assignment"),
        ("a = b", "not an assignment"),
        ("a=${b:-c}", "unsupported expansion"),
        ("a=${b", "unsupported expansion"),
        ('a="$1"', "parameter"),
        ('a="pa$$word"', "parameter"),
        ("a=~/spool", "'~'"),
        ('a="unterminated', "unterminated double quote"),
        ("a='unterminated", "unterminated single quote"),
        ("a=$HOME", "not set"),
    ],
)
def test_shell_features_are_refused_with_line_and_hint(text, words):
    with pytest.raises(ShellSyntaxError) as e:
        parse("# first line\n" + text + "\n", no_lookup)
    assert words in e.value.message
    assert e.value.line == 2
    assert e.value.hint


def test_hints_name_the_fix():
    with pytest.raises(ShellSyntaxError) as e:
        parse("export a=b\n", no_lookup)
    assert "drop 'export'" in e.value.hint
    with pytest.raises(ShellSyntaxError) as e:
        parse("a=b c\n", no_lookup)
    assert 'a="b c"' in e.value.hint
    with pytest.raises(ShellSyntaxError) as e:
        parse("a = b\n", no_lookup)
    assert "no spaces around '='" in e.value.hint


@given(st.text(max_size=200))
def test_any_input_parses_or_fails_cleanly(text):
    try:
        result = parse(text, no_lookup)
    except ShellSyntaxError as e:
        assert e.line >= 1
    else:
        assert all(a.key for a in result)


@given(st.text(alphabet=st.characters(blacklist_characters="'"), max_size=50))
def test_single_quoted_values_round_trip(value):
    assert values(f"k='{value}'\n") == {"k": value}
