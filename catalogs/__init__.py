"""What exists and what was done: catalog and request tables, ingestion, shard planning,
versioned Delta manifests, the model registry and storage URIs. Never imports torch."""
