"""Adapting a model to a new lab: LoRA adapters, recalibration, active learning, agreement."""
