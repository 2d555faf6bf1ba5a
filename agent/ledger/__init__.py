"""The verifiable ledger: records, Merkle tree, signed tree heads, store and audit bundles."""
