"""hashmesh node: storage, ledger, federation, HTTP API and CLI.

Layer: node. It imports :mod:`protocol`; ``protocol`` never imports it.
"""
