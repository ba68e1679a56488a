"""errwise: continual relation extraction with LLMs that learn from their own errors."""

__version__ = "0.1.0"
