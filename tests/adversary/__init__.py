"""An adversary harness the tests of any feature can reuse (issue 14, item 7).

Each piece causes one kind of fault against real files, real processes and
real servers on 127.0.0.1, bounded in count and time:

* :mod:`tests.adversary.corrupter`: flip bytes of a file at chosen or random
  offsets (optionally only inside one SQLite table's pages), truncate it, and
  put it back.
* :mod:`tests.adversary.disk`: a real small ``tmpfs`` (mounted when the tests
  run as root, skipped with the reason otherwise), a disk filler that leaves
  a chosen number of bytes free, and a read-only remount.
"""
