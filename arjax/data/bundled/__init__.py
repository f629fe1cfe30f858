"""Data sets vendored with arjax, so the default run needs no network (see each README)."""
