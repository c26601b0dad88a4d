"""Storage formats: bit packing, the bit ledger and the checkpoint files."""
