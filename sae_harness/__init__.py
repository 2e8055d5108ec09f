"""Machinery of the hierarchical-SAE experiment: text -> tokens -> activations -> SAE -> scores -> files.

experiment.py holds the experiment itself (configuration, the SAE, its trainer, main); this
package holds what it stands on, one step of the data's path per module:

    presets.py          the real and the embedded setting; EXPERIMENT_* environment variables
    text_sources.py     OpenWebText, or text shipped in installed packages
    sae_probes_data.py  the labelled sae-probes datasets: probing suite vs. training text
    language_model.py   the model as a TransformerLens HookedTransformer (GGUF conversion)
    activations.py      packing, residual-stream activations, the on-disk activation cache
    sae_lens_format.py  saving/loading the SAE in SAE-Lens' format
    run_directory.py    the run directory: atomic JSON, final_info.json, status, training log
    provenance.py       versions, commit and machine of a run
    errors.py           failures with a one-line explanation
"""
