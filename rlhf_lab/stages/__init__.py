"""Trainable stages (Lightning modules) and the evaluation stage."""
