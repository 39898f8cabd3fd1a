"""Flywheel log: every workload decision as one OpenAI-compatible log record (CONTRACTS.md §5).

``schema`` is the contract, ``records`` builds records from plain decision values,
``emitter`` appends them to daily JSONL files, ``loaders`` export them (JSONL,
distillation training sets, Elasticsearch).
"""
