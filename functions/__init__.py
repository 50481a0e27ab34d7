"""Handlers (one module per HTTP function) over the shared lib in `functions.lib`."""
