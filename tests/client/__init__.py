"""Tests of the trainer-side distribution flopledger-client (client/)."""
