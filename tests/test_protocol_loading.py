"""Loading protocol files: every council by default, and errors that name the file, the line and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts import Council
from mappings import CHECKS, MappingError, load_protocol, load_protocols
from router import Settings, build_router
from tests.council_data import step_down, transfer

HEAD = 'id = "x"\ncouncil = "luton"\nseed = "002"\n'
GOOD_RULE = '[[rule]]\nid = "G1"\ncheck = "consent"\nmessage = "m"\nfix = "f"\n'


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    load_protocol(path)


async def test_every_seed_protocol_is_loaded_by_default() -> None:
    """One protocol file per council, and build_router uses them all unless told otherwise."""
    assert set(Council) == set(load_protocols())
    router = build_router(Settings(bootstrap_servers="127.0.0.1:1"), targets={}, sources={})
    await router.outbox.stop()  # never started: closes the producer object
    assert set(Council) == set(router.flow.protocols)
    assert {p.origin for p in router.flow.protocols.values()} == {
        "swindon.toml",
        "swindon-2022.toml",
        "luton.toml",
        "barnsley.toml",
        "north-somerset.toml",
        "families-first-example.toml",  # illustrative (contract 1.1), not one of the five seed councils
    }


def test_unknown_check_kind_is_refused_with_file_line_and_rule(tmp_path: Path) -> None:
    """The check kinds are a closed set: an unknown one is named with its line and rule id."""
    with pytest.raises(MappingError, match=r"broken\.toml: line 12: rule LU-2 \(#2\): check") as err:
        _load(tmp_path, HEAD + GOOD_RULE + '\n[[rule]]\nid = "LU-2"\ncheck = "vibes"\nmessage = "m"\nfix = "f"\n')
    assert "management-decision" in str(err.value)


def test_wrong_parameter_names_its_line(tmp_path: Path) -> None:
    """A bad value points at the key's own line, not only the rule's header."""
    text = HEAD + GOOD_RULE + '[[rule]]\nid = "LU-6"\ncheck = "consent"\nmessage = "m"\nfix = "f"\nsigned = "maybe"\n'
    with pytest.raises(MappingError, match=r"line 14: rule LU-6 \(#2\): signed"):
        _load(tmp_path, text)


def test_unknown_rule_id_and_route_kind_are_refused(tmp_path: Path) -> None:
    """Rule ids follow PROTOCOLS.md; routing kinds are a closed set too."""
    with pytest.raises(MappingError, match=r"line 5: rule \? \(#1\)|line 5: rule XX-1"):
        _load(tmp_path, HEAD + '[[rule]]\nid = "XX-1"\ncheck = "consent"\nmessage = "m"\nfix = "f"\n')
    with pytest.raises(MappingError, match=r"line 11: route LU-9 \(#1\): kind"):
        _load(tmp_path, HEAD + GOOD_RULE + '[[route]]\nrule = "LU-9"\nkind = "teleport"\n')


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A file that is not TOML is refused with tomllib's line and column."""
    with pytest.raises(MappingError, match=r"broken\.toml: .*line 4"):
        _load(tmp_path, HEAD + "[[rule]\n")


def test_two_files_for_one_council_are_refused(tmp_path: Path) -> None:
    """One protocol per council: a second file for the same council is an error naming both."""
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text(HEAD + GOOD_RULE)
    with pytest.raises(MappingError, match=r"b\.toml: council 'luton' already has a\.toml"):
        load_protocols(tmp_path)


def test_the_check_set_is_closed_and_documented() -> None:
    """Every check kind is listed, and each shipped rule uses one of them."""
    used = {r.check for p in load_protocols().values() for r in p.spec.rule}
    assert used <= set(CHECKS)
    assert set(CHECKS) == used  # no dead check kinds either


def test_every_shipped_example_meets_its_councils_protocol() -> None:
    """The synthetic examples in contracts/examples pass their council's rules."""
    protocols = load_protocols()
    for council in ("swindon", "swindon-2022", "luton", "barnsley", "north-somerset"):
        t = transfer(step_down(council))
        assert (council, []) == (council, protocols[t.council].check(t))


def test_a_whole_file_error_names_the_file_and_line_1(tmp_path: Path) -> None:
    """An error about the file as a whole (no key to point at) names the file and line 1 rather than crashing."""
    pathways = '[[pathway]]\ndirection = "step-down"\nsource = "lcs"\ntarget = "ehm"\n'
    with pytest.raises(
        MappingError, match=r"broken\.toml: line 1: the file as a whole: .*one \[\[pathway\]\] per direction"
    ):
        _load(tmp_path, HEAD + GOOD_RULE + pathways + pathways)


def test_a_deadline_rule_of_another_council_is_refused(tmp_path: Path) -> None:
    """A protocol may only check its own council's deadlines (deadlines.toml names the council of each)."""
    rule = '[[rule]]\nid = "NS-4"\ncheck = "deadline"\nmessage = "m"\nfix = "f"\n'
    with pytest.raises(
        MappingError, match=r"broken\.toml: line 1: the file as a whole: .*NS-4 belongs to north-somerset"
    ):
        _load(tmp_path, HEAD + GOOD_RULE + rule)
