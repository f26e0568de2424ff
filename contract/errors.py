"""The contract's one exception root: whatever breaks the wire contract or the layout."""

from __future__ import annotations


class ContractError(ValueError):
    """A payload, event, manifest or name that breaks the contract (docs/protocol.md)."""
