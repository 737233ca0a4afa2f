"""Trainer integrations (TRL, Unsloth, TorchTune, Axolotl). Each module imports its trainer lazily, behind an extra."""
