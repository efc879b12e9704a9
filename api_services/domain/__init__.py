"""Domain nouns: request/response models at the edge, plain functions on a shard connection inside."""
