"""Smear segmentation with Cellpose and the cells table."""
