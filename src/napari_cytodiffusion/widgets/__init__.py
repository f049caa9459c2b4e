"""Thin napari widgets over the library; each runs its work in a ``thread_worker``."""
