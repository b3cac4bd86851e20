"""What every stage shares: config dataclasses, digests, model loading, chat encoding, records, row files."""
