"""Machinery of the hierarchical-SAE experiment: text -> tokens -> activations -> SAE -> scores -> files.

experiment.py holds the experiment itself (configuration, the SAE, its trainer, main); this
package holds what it stands on, in sub-packages by concern. Imports point one way, down this
list (tests/test_layering.py fails on an arrow back up or a cycle):

    errors.py             failures with a one-line explanation
    records/              what a run writes and how it is read back
        run_directory.py    the run directory: atomic files, final_info.json, status, training log
        schemas.py          the schemas of our JSON (weights, hierarchy, frontier, vs_baseline)
        degeneracy.py       DESIGN 7's checks: is a run's SAE degenerate?
        frontier.py         the baseline frontier (ReLU, SAE-Lens TopK, Matryoshka) and vs_baseline
        notes.py            the lab notebook notes.txt
        study_table.py      the study table and its headline metrics (plot.py, notes, README)
        cache_keys.py       how every cache names an entry: a digest of what it was computed from
        numbers.py          finite_number: the one test of "a number a record can hold"
    hardware/             the machine
        machine.py          the CPU's name and native-bf16 flags
        precision.py        bf16 or fp32, for the model and the SAE: measured per machine
        cpu_threads.py      how many threads a phase uses, from the other processes' load
        cpu_heap.py         large CPU tensors reuse freed memory instead of fresh kernel pages
        distributed.py      torchrun: ranks, DDP, all-reduced whole-batch figures, rank 0 writes
    data/                 where the model and the text come from
        presets.py          the real and the embedded setting; EXPERIMENT_* environment variables
        preflight.py        checks that a run can load its model and text, before any work
        text_sources.py     OpenWebText, or text shipped in installed packages
        sae_probes_data.py  the labelled sae-probes datasets: probing suite vs. training text
        language_model.py   the model as a TransformerLens HookedTransformer (GGUF conversion)
        activations.py      packing, residual-stream activations, the on-disk activation cache
        heldout_tokens.py   the held-out activations' token ids, recollected by the tokenizer
    training/             what training an SAE stands on
        contract.py         what the package reads from experiment.py (HARNESS_READS), checked at start
        config_checks.py    impossible Config settings refused with a reason
        sae_checks.py       an edited SAE held to saving, folding and the kernels; the rehearsal
        sae_kernels.py      exact, faster forms of the SAE's matmuls (sparse latents, TopK gradient)
        sae_files.py        the SAE on disk: strict state + SAE-Lens view of the base level
        training_session.py resume, checkpoints, the training log, progress, divergence, stops
        concept_diagnostics.py what decides the concept level's fate, per logged step
        firing_clock.py     training tokens since each latent fired: dead latents, AuxK
        checkpoint.py       checkpoint files and graceful stops on SIGINT/SIGTERM
    evals/                every evaluation of a trained SAE (evaluations.py runs them all)
        heldout.py          the trained SAE on held-out tokens (explained variance, L0, dead)
        sae_bench_view.py   the SAE as SAE-Bench sees it, and its files
        core.py, sparse_probing.py, absorption*.py   SAE-Bench's evals, with the model loaded
        weights.py, hierarchy.py, concept_contexts.py  our analyses
        concept_page.py     concepts.html: the concept browser of a run
        eval_logs.py        each eval's own output to run_i/logs/<eval>.log
    run/                  one run's life
        provenance.py       versions, commit and machine of a run
        experiment_run.py   one run from its checks to its last stderr line
        command_line.py     --out_dir, exit codes and the last stderr line
"""
