"""The one exception type users see.

Anything the *user* can fix (a bad override, a missing file, a checkpoint that belongs to another
encoder) raises :class:`RCDMError` with a message that names the fix. The command-line entry points
print that message alone -- no traceback wall -- and exit with status 2. Bugs stay ordinary exceptions.
"""


class RCDMError(Exception):
    """A problem with the user's input, explained in one message that says how to fix it."""
