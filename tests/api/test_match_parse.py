"""The fast path of ``POST /v1/match`` bodies reads exactly what the strict parser reads.

:func:`node.api.match.parse_match_request` reads the common plain shape with
two regular expressions; every body it reads that way must give the request
the strict parser gives, and every other body goes to the strict parser.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from node.api.match import _parse_plain, parse_match_request, parse_match_request_strictly
from node.ledger.matching import MAX_BATCH
from protocol.errors import MalformedError

_TYPES = st.sampled_from(["sha256", "md5", "sha1", "pdq", "photodna", "SHA256", "sha512", ""])
_HEXISH = st.text(alphabet='0123456789abcdefABCDEF g\\"', min_size=0, max_size=70)


@st.composite
def _values(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from([32, 40, 64, 63, 65, 0]))
    value = draw(st.text(alphabet="0123456789abcdef", min_size=length, max_size=length))
    return draw(st.one_of(st.just(value), _HEXISH))


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    plain = st.sampled_from([("sha256", 64), ("md5", 32), ("sha1", 40), ("pdq", 64)]).flatmap(
        lambda tl: st.text(alphabet="0123456789abcdef", min_size=tl[1], max_size=tl[1]).map(
            lambda value: {"type": tl[0], "value": value}
        )
    )
    items = draw(
        st.lists(
            st.one_of(
                plain,
                plain,
                plain,
                plain,
                plain,
                plain,
                plain,
                plain,
                st.fixed_dictionaries({"type": _TYPES, "value": _values()}),
                st.fixed_dictionaries(
                    {"type": _TYPES, "value": _values(), "quality": st.integers(0, 100)}
                ),
                st.just({"value": "ab" * 16, "type": "md5"}),  # keys in the other order
                st.just("md5:" + "ab" * 16),
            ),
            max_size=6,
        )
    )
    doc: dict[str, object] = {"hashes": items}
    if draw(st.booleans()):
        doc["max_distance"] = draw(
            st.one_of(st.integers(0, 64), st.integers(-2, 100), st.just(3.0), st.just(True))
        )
    if draw(st.booleans()):
        doc["receipts"] = draw(st.one_of(st.booleans(), st.booleans(), st.just("yes")))
    if draw(st.integers(0, 4)) == 4:
        doc = dict(reversed(list(doc.items())))
    separators = draw(
        st.sampled_from([(", ", ": "), (",", ":"), (", ", ":"), (", ", ": "), (" ,", " : ")])
    )
    text = json.dumps(doc, separators=separators, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 9:
        text = text.replace('"type"', '"t\\u0079pe"', 1)
    return text.encode("utf-8")


def _strict(body: bytes) -> object:
    try:
        return parse_match_request_strictly(body)
    except MalformedError as e:
        return ("refused", e.field)


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_the_fast_path_reads_what_the_strict_parser_reads(body: bytes) -> None:
    plain = _parse_plain(body)
    if plain is not None:
        assert plain == _strict(body)
    try:
        got: object = parse_match_request(body)
    except MalformedError as e:
        got = ("refused", e.field)
    assert got == _strict(body)


def test_plain_bulk_bodies_take_the_fast_path() -> None:
    items = [{"type": "sha256", "value": f"{i:064x}"} for i in range(MAX_BATCH)]
    for separators in ((", ", ": "), (",", ":")):
        body = json.dumps({"hashes": items, "max_distance": 12}, separators=separators).encode()
        plain = _parse_plain(body)
        assert plain is not None and len(plain.queries) == MAX_BATCH
        assert plain == parse_match_request_strictly(body)
    # One more than the batch limit: the strict parser names the field.
    body = json.dumps({"hashes": [*items, items[0]]}).encode()
    assert _parse_plain(body) is None
