"""The clinical knowledge in rules/*.yaml, loaded and validated at start-up."""
