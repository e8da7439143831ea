"""Tensors: tasks, training with back-off, recombination and mutation, fitness, and the worker steps."""
