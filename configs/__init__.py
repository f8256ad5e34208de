"""Run configs (ml_collections): `--config configs/<file>.py[:arg]`; numbers from recipes.py."""
