"""experiment.py's SAE at the sizes a test wants, with the model identity a run would stamp."""

import experiment as E


def hierarchical_sae(d_in: int, n_base: int, n_concept: int, concept_k: int, *, model_name: str = "m",
                     hook_layer: int = 0, context_size: int = 8, **config_changes) -> E.HierarchicalSAE:
    """HierarchicalSAE(Config(n_base=n_base, concept_k=concept_k, **config_changes), d_in),
    stamped with a model identity (SAE-Bench's evals read it); n_concept must be Config's n_base/4."""
    cfg = E.Config(n_base=n_base, concept_k=concept_k, **config_changes)
    assert cfg.n_concept == n_concept, f"n_concept {n_concept} is not Config's {cfg.n_concept}"
    return E.HierarchicalSAE(cfg, d_in).stamp_identity(model_name, hook_layer, context_size)
