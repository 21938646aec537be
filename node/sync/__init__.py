"""Sync with peers: HTTP client, one-round engine, continuous runner.

Layer: node.sync (imports node.ledger and node.storage, never node.api or node.cli).
"""
