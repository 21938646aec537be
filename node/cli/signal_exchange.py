"""A python-threatexchange ``SignalExchangeAPI`` for hashmesh: HMA subscribes to a node.

Layer: node.cli (composition root; an entry point for other programs rather
than a command). Needs the ``threatexchange`` extra:
``pip install 'hashmesh[threatexchange]'``.

Hasher-Matcher-Actioner (HMA) and the ``threatexchange`` command line build
their exchanges on python-threatexchange: a collaboration is configured with
a :class:`HashmeshCollabConfig` (the node's peer card, a subscriber client
certificate and key), and :meth:`HashmeshSignalExchange.fetch_iter` fetches
the log in pages by tree size, each page resumable from its
:class:`HashmeshCheckpoint`.

A platform keeps the transparency guarantee instead of trusting TLS: the
latest checkpoint is opened with the origin's pinned key (``protocol``), and
a page ``[a, b)`` is yielded only once the compact range of ``[0, a)`` held
in the checkpoint, extended by the page's leaf hashes, gives a root from
which the node's consistency proof ``b -> n`` reaches the signed root of size
``n`` (or, at ``b = n``, is that root). A node that rewrote its history, or a
page changed in transit or at rest, is refused with
:class:`HashmeshFetchError` before anything of it is yielded.

Mapping (docs/integrations.md): ``md5`` -> ``VideoMD5Signal``, ``sha256`` ->
``VideoSHA256Signal``, ``pdq`` -> ``PdqSignal``; sha1 and photodna have no
threatexchange signal type and are kept in the fetched records but never
indexed. Records are keyed by entry index; a retraction arrives as the
deletion of its target's key. The origin's own add is a positive-class
opinion tagged with the entry's labels; the origin's latest opinion entry on
it adds a second opinion (``confirm``: positive, ``dispute`` and
``false-positive``: negative), so threatexchange aggregates it as disputed.
"""

# No `from __future__ import annotations`: threatexchange's CLI reads the config
# dataclass's field types at run time and refuses string annotations.

import asyncio
import dataclasses
import typing as t
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path

from threatexchange.exchanges import fetch_state as state
from threatexchange.exchanges.collab_config import CollaborationConfigWithDefaults
from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPI
from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest
from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal
from threatexchange.signal_type.sha256 import VideoSHA256Signal
from threatexchange.signal_type.signal_base import SignalType

from node.cli.cards import parse_card
from node.errors import ConfigError, NodeError
from node.sync.client import PAGE_SIZE, HttpPeerClient
from protocol.entry import AddEntry, OpinionEntry, RetractEntry, parse_entries
from protocol.errors import ProtocolError
from protocol.hashing import hash_leaves
from protocol.keys import NoteVerifier
from protocol.merkle import verify_consistency
from protocol.rotation import KeyChain
from protocol.tree import CompactRange

__all__ = [
    "SIGNAL_TYPES",
    "TX_MANIFEST",
    "HashmeshCheckpoint",
    "HashmeshCollabConfig",
    "HashmeshFetchError",
    "HashmeshRecord",
    "HashmeshSignalExchange",
]

SIGNAL_TYPES: t.Mapping[str, type[SignalType]] = {
    "md5": VideoMD5Signal,
    "sha256": VideoSHA256Signal,
    "pdq": PdqSignal,
}
"""hashmesh signal type -> threatexchange signal type (sha1, photodna: none)."""

_NEGATIVE_VERDICTS = frozenset({"dispute", "false-positive"})


class HashmeshFetchError(NodeError):
    """A fetch was refused: the node's checkpoint or a page did not verify, or it failed."""


@dataclasses.dataclass
class HashmeshCollabConfig(CollaborationConfigWithDefaults):
    """A collaboration with one hashmesh node: which log, and how to reach it.

    Paths are read when a fetch starts. ``origin`` defaults to the card's own
    log; another log the node relays needs that origin's ``verifier_key``.
    """

    card: str = dataclasses.field(
        default="", metadata={"help": "the node's peer card (JSON)", "metavar": "FILE"}
    )
    client_cert: str = dataclasses.field(
        default="", metadata={"help": "subscriber client certificate (PEM)", "metavar": "FILE"}
    )
    client_key: str = dataclasses.field(
        default="", metadata={"help": "its private key (PEM)", "metavar": "FILE"}
    )
    origin: str = dataclasses.field(
        default="", metadata={"help": "log to fetch (default: the card's)", "metavar": "ORIGIN"}
    )
    verifier_key: str = dataclasses.field(
        default="",
        metadata={"help": "key of --origin when not the card's own log", "metavar": "VKEY"},
    )
    page_size: int = dataclasses.field(
        default=PAGE_SIZE, metadata={"help": "entries per verified page", "metavar": "N"}
    )


@dataclasses.dataclass
class HashmeshCheckpoint(state.FetchCheckpointBase):
    """How far a collaboration has fetched: ``[0, size)`` verified, as a compact range.

    Attributes:
        origin: the log fetched.
        size: entries fetched and verified.
        frontier: the compact range of ``[0, size)`` (hex), enough to check
            that the next page extends exactly this tree.
    """

    origin: str
    size: int
    frontier: list[str]

    def compact_range(self) -> CompactRange:
        """The verified tree this checkpoint holds."""
        try:
            return CompactRange.from_frontier(self.size, [bytes.fromhex(h) for h in self.frontier])
        except (ProtocolError, ValueError) as e:
            raise HashmeshFetchError(f"the stored fetch checkpoint is damaged: {e}") from e


@dataclasses.dataclass
class HashmeshRecord(state.FetchedSignalMetadata):
    """One add entry of the log, as fetched (also the metadata threatexchange indexes).

    A record with an empty ``signal_type`` carries only a later opinion of
    the origin on an entry fetched before (merged by ``fetch_value_merge``).
    """

    origin: str
    index: int
    signal_type: str
    value: str
    labels: list[str]
    quality: int | None = None
    verdict: str | None = None

    def get_as_opinions(self) -> t.Sequence[state.SignalOpinion]:
        """The origin's listing (positive, tagged with its labels), then its latest opinion."""
        tags = set(self.labels)
        opinions = [state.SignalOpinion(False, state.SignalOpinionCategory.POSITIVE_CLASS, tags)]
        if self.verdict is not None:
            category = (
                state.SignalOpinionCategory.NEGATIVE_CLASS
                if self.verdict in _NEGATIVE_VERDICTS
                else state.SignalOpinionCategory.POSITIVE_CLASS
            )
            opinions.append(state.SignalOpinion(False, category, tags))
        return opinions


_Delta = state.FetchDelta[int, HashmeshRecord, HashmeshCheckpoint]


class HashmeshSignalExchange(
    SignalExchangeAPI[HashmeshCollabConfig, HashmeshCheckpoint, HashmeshRecord, int, HashmeshRecord]
):
    """Fetches one hashmesh log over mutual TLS, every page verified with ``protocol``."""

    def __init__(self, collab: HashmeshCollabConfig) -> None:
        self.collab = collab

    @classmethod
    def for_collab(cls, collab: HashmeshCollabConfig) -> "HashmeshSignalExchange":
        """The API for ``collab`` (its files are read when a fetch starts)."""
        return cls(collab)

    @classmethod
    def get_name(cls) -> str:
        """The name collaborations are configured with."""
        return "hashmesh"

    @staticmethod
    def get_config_cls() -> type[HashmeshCollabConfig]:
        """The collaboration settings."""
        return HashmeshCollabConfig

    @staticmethod
    def get_checkpoint_cls() -> type[HashmeshCheckpoint]:
        """The resumable fetch state."""
        return HashmeshCheckpoint

    @staticmethod
    def get_record_cls() -> type[HashmeshRecord]:
        """The fetched record (and index metadata)."""
        return HashmeshRecord

    @classmethod
    def fetch_value_merge(
        cls, old: HashmeshRecord | None, new: HashmeshRecord | None
    ) -> HashmeshRecord | None:
        """A later opinion updates the record it is about; anything else replaces."""
        if new is not None and not new.signal_type:
            return None if old is None else dataclasses.replace(old, verdict=new.verdict)
        return new

    @classmethod
    def naive_convert_to_signal_type(
        cls,
        signal_types: t.Sequence[type[SignalType]],
        collab: HashmeshCollabConfig,
        fetched: t.Mapping[int, HashmeshRecord],
    ) -> dict[type[SignalType], dict[str, HashmeshRecord]]:
        """Records by threatexchange signal type and value (types without one left out)."""
        wanted = set(signal_types)
        out: dict[type[SignalType], dict[str, HashmeshRecord]] = {}
        for record in fetched.values():
            tx_type = SIGNAL_TYPES.get(record.signal_type)
            if tx_type is None or tx_type not in wanted:
                continue
            out.setdefault(tx_type, {})[record.value] = record
        return out

    def fetch_iter(
        self,
        supported_signal_types: t.Sequence[type[SignalType]],
        checkpoint: HashmeshCheckpoint | None,
    ) -> Iterator[_Delta]:
        """Verified pages from ``checkpoint`` (None: from the start) up to the latest checkpoint.

        Raises:
            HashmeshFetchError: the node's checkpoint does not verify with the
                origin's key, the log is not an extension of what was fetched
                before, a page does not lead to the signed root, or the node
                cannot be reached or answers wrongly. Nothing of the failing
                page is yielded.
        """
        source = _Source.open(self.collab)
        loop = asyncio.new_event_loop()
        try:
            yield from self._pages(loop, source, checkpoint)
        finally:
            loop.run_until_complete(source.client.close())
            loop.close()

    def _pages(
        self,
        loop: asyncio.AbstractEventLoop,
        source: "_Source",
        checkpoint: HashmeshCheckpoint | None,
    ) -> Iterator[_Delta]:
        origin = source.origin

        def run(step: Awaitable[t.Any]) -> t.Any:
            try:
                return loop.run_until_complete(step)
            except NodeError as e:
                raise HashmeshFetchError(f"{origin} from {source.url}: {e}") from e

        note = run(source.client.checkpoint(origin))
        try:
            signed = source.chain.open(note.encode("utf-8")).checkpoint
        except ProtocolError as e:
            raise HashmeshFetchError(
                f"{origin} from {source.url}: the checkpoint does not verify with the "
                f"origin's key ({e}); nothing was fetched. If the origin rotated its key, "
                "check the rotation (hashmesh audit) and set the collaboration's verifier_key"
            ) from e
        if checkpoint is not None and checkpoint.origin != origin:
            raise HashmeshFetchError(
                f"the fetch checkpoint is of {checkpoint.origin}, this collaboration fetches "
                f"{origin}: clear the collaboration's state"
            )
        tree = CompactRange.empty() if checkpoint is None else checkpoint.compact_range()
        if signed.size < tree.size:
            raise HashmeshFetchError(
                f"{origin} from {source.url}: the signed tree has {signed.size} entries, fewer "
                f"than the {tree.size} fetched before: the log was rewritten or rolled back"
            )
        if signed.size == tree.size:
            if tree.root() != signed.root_hash:
                raise HashmeshFetchError(
                    f"{origin} from {source.url}: the signed root of size {signed.size} is not "
                    "the root of what was fetched before: the log was rewritten"
                )
            return
        page = max(1, self.collab.page_size)
        while tree.size < signed.size:
            start = tree.size
            end = min(start + page, signed.size)
            datas = run(source.client.entries(origin, start, end))
            grown = tree.copy()
            grown.extend(hash_leaves(datas))
            root = grown.root()
            try:
                if end == signed.size:
                    if root != signed.root_hash:
                        raise HashmeshFetchError(
                            f"entries [{start}, {end}) do not lead to the signed root"
                        )
                else:
                    proof = run(source.client.consistency(origin, end, signed.size))
                    verify_consistency(end, signed.size, root, signed.root_hash, list(proof.hashes))
                entries = parse_entries(datas, start)
            except (ProtocolError, HashmeshFetchError) as e:
                raise HashmeshFetchError(
                    f"{origin} from {source.url}: page [{start}, {end}) refused, it does not "
                    f"verify against the checkpoint of size {signed.size}: {e}"
                ) from e
            tree = grown
            yield _Delta(
                _updates(origin, start, entries),
                HashmeshCheckpoint(origin, end, [h.hex() for h in tree.frontier]),
            )


def _updates(
    origin: str, start: int, entries: Sequence[object]
) -> dict[int, HashmeshRecord | None]:
    """One page's changes by entry index: adds, retractions (None), the origin's opinions."""
    updates: dict[int, HashmeshRecord | None] = {}
    for index, entry in enumerate(entries, start):
        if type(entry) is AddEntry:
            updates[index] = HashmeshRecord(
                origin,
                index,
                entry.signal_type,
                entry.value,
                list(entry.labels),
                entry.quality,
            )
        elif type(entry) is RetractEntry:
            updates[entry.index] = None
        elif type(entry) is OpinionEntry and entry.origin == origin:
            held = updates.get(entry.index)
            if held is not None and held.signal_type:
                held.verdict = entry.verdict
            elif entry.index not in updates:
                updates[entry.index] = HashmeshRecord(
                    origin, entry.index, "", "", [], None, entry.verdict
                )
    return updates


@dataclasses.dataclass
class _Source:
    """Where and how one fetch reads: the client, the origin and its key."""

    client: HttpPeerClient
    url: str
    origin: str
    chain: KeyChain

    @classmethod
    def open(cls, collab: HashmeshCollabConfig) -> "_Source":
        try:
            card = parse_card(Path(collab.card).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read card {collab.card!r}: {e.strerror or e}") from e
        origin = collab.origin or card.name
        vkey = collab.verifier_key or (card.vkey if origin == card.name else "")
        if not vkey:
            raise ConfigError(
                f"origin {origin} is not the card's own log ({card.name}): give its verifier_key"
            )
        try:
            verifier = NoteVerifier.from_text(vkey)
        except ProtocolError as e:
            raise ConfigError(f"verifier key of {origin}: {e}") from e
        if verifier.name != origin:
            raise ConfigError(f"the verifier key is named {verifier.name}, not {origin}")
        for path in (collab.client_cert, collab.client_key):
            if not Path(path).is_file():
                raise ConfigError(f"client certificate or key {path!r} is not a file")
        client = HttpPeerClient(
            card.name,
            card.url,
            server_cert_pem=card.tls_cert,
            cert_path=Path(collab.client_cert),
            key_path=Path(collab.client_key),
        )
        return cls(client, card.url, origin, KeyChain.pinned(verifier))


TX_MANIFEST = ThreatExchangeExtensionManifest(apis=(HashmeshSignalExchange,))
"""Lets ``threatexchange config extensions add node.cli.signal_exchange`` load it."""
