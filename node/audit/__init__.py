"""The auditor: checks that nodes and bundles show one true history of each origin.

Layer: node.audit (imports node.sync, node.ledger and node.storage, never
node.api or node.cli). :mod:`node.audit.client` reads a node's API as an
``auditor``, :mod:`node.audit.run` runs one audit, :mod:`node.audit.state`
keeps what earlier audits verified.
"""
