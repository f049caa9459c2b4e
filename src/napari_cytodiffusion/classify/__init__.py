"""The generative classifier: diffusion errors → probabilities, certainty, anomaly."""
