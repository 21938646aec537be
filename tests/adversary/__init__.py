"""An adversary harness the tests of any feature can reuse (issue 14, item 7).

Each piece causes one kind of fault against real files, real processes and
real servers on 127.0.0.1 (real mutual TLS, real SQLite files, real keys),
bounded in count and time:

* :mod:`tests.adversary.corrupter`: flip bytes of a file at chosen or random
  offsets (optionally only inside one SQLite table's pages), truncate it, and
  put it back.
* :mod:`tests.adversary.disk`: a real small ``tmpfs`` (mounted when the tests
  run as root, skipped with the reason otherwise), a disk filler that leaves
  a chosen number of bytes free, and a read-only remount.
* :mod:`tests.adversary.malicious_peer`: one index of the scripted peers'
  faults (forged, truncated, endless, slow, wrong entries, bad proofs:
  ``tests.sync.conftest.ScriptedPeer`` over real mTLS,
  ``tests.sync.memory_peer`` in memory) plus whole-node attacks: a rolled-back
  author (an old copy served where the author was) and a split view (a second
  history under the same key).
* :mod:`tests.adversary.flooder`: a connection flooder (idle or slow
  connections from one or many loopback addresses, in its own process).
* :mod:`tests.adversary.served_process`: ``hashmesh serve`` in a child
  process with its own open-file limit, the server under attack.

The scoreboard these feed is in ``docs/reliability.md``.
"""
