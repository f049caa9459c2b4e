"""The class-conditional diffusion model: architecture, folders, registry and training."""
