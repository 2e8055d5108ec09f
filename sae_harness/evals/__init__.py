"""Evaluations of a trained SAE: SAE-Bench's (sparse probing, absorption, core) and our own
analyses of its weights (`weights.py`) and of how its concept latents depend on the base latents
they read (`hierarchy.py`). Each returns the flat means for one `final_info.json` group and the
full details for that eval's own JSON file in the run directory.
"""
