"""SQLite storage of the ledger. Layer: node.storage (the bottom of node)."""
