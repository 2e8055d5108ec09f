"""What training an SAE stands on: the contract with experiment.py, the checks an edited SAE is
held to, the sparse kernels, the training session (resume, log, stops), checkpoints, files."""
