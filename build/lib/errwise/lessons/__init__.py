"""A memory of lessons distilled from error and success cases, retrieved into prompts."""
