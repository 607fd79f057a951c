"""A user module that fails while being imported."""

raise ImportError("needs a package this machine does not have")
