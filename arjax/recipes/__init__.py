"""Shared bases of config files (configs/*): functions that return ConfigDicts, importable by
configs, tests and notebooks. They sit above `arjax.models` (they read a model's default config)
and beside `arjax.config`, below the trainer (docs/architecture.md)."""
