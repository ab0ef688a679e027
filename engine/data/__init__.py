"""Data at rest: storage (local and S3), PNG checks, shards, datasets (import, export)."""
