"""The ``flopledger`` command: the parser and one module per command group."""
