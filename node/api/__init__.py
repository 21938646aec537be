"""The node's read-only HTTP API over mutual TLS.

Layer: node.api (imports node.sync, node.ledger, node.storage; never node.cli).

:mod:`node.api.app` builds the aiohttp application (routes, authorisation on
every request, error mapping), :mod:`node.api.handlers` answers the read
endpoints, :mod:`node.api.sse` streams checkpoint announcements, and
:mod:`node.api.server` serves it all with the node's TLS identity.
"""

from __future__ import annotations
