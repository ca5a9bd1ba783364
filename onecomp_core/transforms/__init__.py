"""Transforms of a whole model that keep its function: rotations folded into the weights."""
