"""Flower 1.41 probe app."""
