"""The ``napari-cytodiffusion`` command line."""
