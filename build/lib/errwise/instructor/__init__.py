"""The instructor: an LLM asked, through a chat backend, to write training data."""
