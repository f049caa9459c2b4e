"""Metrics and plots for classification, segmentation and generation."""
