"""Evaluations of a trained SAE: SAE-Bench's (sparse probing, absorption, core) and our own
analyses of its weights (`weights.py`), of how its concept latents depend on the base latents
they read (`hierarchy.py`) and of the held-out text they fire on (`concept_contexts.py`: top
contexts and concept coherence, for the concept page). Each returns the flat means for one `final_info.json` group and the
full details for that eval's own JSON file in the run directory.
"""
