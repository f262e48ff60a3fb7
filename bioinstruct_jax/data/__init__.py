"""Instruction data: the record type, seed tasks, generation (self-instruct with an
OpenAI-compatible model) and its filters."""
