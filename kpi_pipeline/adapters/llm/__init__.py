"""OpenAI-compatible chat-completions client (the only I/O of the workloads area)."""
