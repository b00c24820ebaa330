"""The adaptation method of METHOD.md §4-§5: one function per step, composed in :mod:`.step`."""
