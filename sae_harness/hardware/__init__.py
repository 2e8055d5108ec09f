"""The machine: its CPU facts, the precision measured on it, CPU threads and heap, and the
processes of a torchrun run."""
