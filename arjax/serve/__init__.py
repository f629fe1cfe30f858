"""Serving: an HTTP JSON API over a trained run with continuous batching (python -m arjax.serve)."""
