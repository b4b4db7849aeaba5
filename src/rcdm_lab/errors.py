"""The one exception type users see.

Anything the *user* can fix (a bad override, a missing file, a checkpoint that belongs to another
encoder) raises :class:`RCDMError` with a message that names the fix. The command-line entry points
print that message alone -- no traceback wall -- and exit with status 2. Bugs stay ordinary exceptions.
"""


class RCDMError(Exception):
    """A problem with the user's input, explained in one message that says how to fix it."""


class UnreadableImageError(RCDMError):
    """An image file that cannot be decoded, found when it is first read (not at dataset construction).

    Readers that can skip an item (the representation-cache build, training batches) catch this, count the file
    and name it in one warning at the end; everything else lets it surface as an RCDMError.
    """

    def __init__(self, relative_path: str, reason: str, root: str = "") -> None:
        self.relative_path, self.reason, self.root = relative_path, reason, root
        where = f"{root}/{relative_path}" if root else relative_path
        super().__init__(f"cannot read image {where} ({reason}): replace or remove the file, or find every such "
                         "file at once with `rcdm-scan ROOT`")
