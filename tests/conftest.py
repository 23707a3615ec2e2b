"""Shared test set-up: one torch thread (as the CLI uses by default), float64 defaults
are passed explicitly in each test."""

import torch

torch.set_num_threads(1)
