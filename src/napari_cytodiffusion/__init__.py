"""napari-cytodiffusion: segment blood smears and classify every cell with a diffusion model.

The package is library first: everything the napari widgets and the command line do is
available from plain Python, without Qt. Heavy dependencies (torch, diffusers, cellpose)
are imported lazily, inside the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
