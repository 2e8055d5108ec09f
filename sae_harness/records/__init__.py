"""What a run writes and how it is read back: the run directory and its files, the schemas of
our JSON, the degeneracy checks, the baseline frontier and vs_baseline, the lab notebook."""
