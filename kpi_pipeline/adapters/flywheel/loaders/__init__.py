"""Flywheel sinks: deterministic JSONL and training sets (``to_jsonl``), Elasticsearch (``to_elastic``)."""
