"""One module per entry point, named after it; each has `handle`, which main.py calls (lazily).

A handler parses the request (through `functions.edge`), calls the shared lib and replies; no
domain logic lives here.
"""
