"""`--help` of every command describes every option (no bare option names)."""
from __future__ import annotations

import argparse

import pytest


class _Parsed(Exception):
    pass


def _parsers(main, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser a command line builds, and its subcommands' parsers (stopped before it parses)."""
    def stop(self, *a, **k):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as e:
        main([])
    top = e.value.args[0]
    subs = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [top] + [p for s in subs for p in s.choices.values()]


def _commands():
    from dsv3_edu.__main__ import main as cli
    from dsv3_edu.accounting import main as accounting
    from dsv3_edu.data.__main__ import main as data
    from dsv3_edu.parallel.ep import main as ep
    return {"dsv3_edu": cli, "dsv3_edu.data": data, "dsv3_edu.accounting": accounting, "dsv3_edu.parallel.ep": ep}


@pytest.mark.parametrize("name", list(_commands()))
def test_every_option_has_a_description(name, monkeypatch):
    parsers = _parsers(_commands()[name], monkeypatch)
    assert parsers
    for p in parsers:
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help and a.help.strip(), f"{p.prog}: {'/'.join(a.option_strings) or a.dest} has no help text"
