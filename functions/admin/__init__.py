"""The operator command line: `python -m functions.admin COMMAND` (see `functions.admin.cli`).

Not an entry point: operators run it with their own credentials, over the same shared lib as the
functions.
"""
