"""Training tokens since each latent last fired: what "dead" means during training.

    clock = FiringClock(n_latents, device)
    clock.tick(fired, tokens)        # after a step: fired (n,) bool, tokens the step saw
    clock.dead(after_tokens)         # (n,) bool: silent for at least that many tokens
    clock.dead_fraction(window)      # for the log (0.0 for a level with no latents)

The counts stay on the device (no synchronisation per step); under torchrun the trainer passes
what fired on any rank and the tokens of every rank, so every rank's clock is the same.
"""

from __future__ import annotations

import torch


class FiringClock:
    def __init__(self, n_latents: int, device: torch.device | str):
        self.tokens_since_fired = torch.zeros(n_latents, device=device)

    @torch.no_grad()
    def tick(self, fired: torch.Tensor, tokens: int) -> None:
        self.tokens_since_fired.add_(tokens).masked_fill_(fired, 0)

    def dead(self, after_tokens: int) -> torch.Tensor:
        return self.tokens_since_fired >= after_tokens

    def dead_fraction(self, window: int) -> float:
        return self.dead(window).float().mean().item() if len(self.tokens_since_fired) else 0.0

    def state_dict(self) -> torch.Tensor:
        return self.tokens_since_fired

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.tokens_since_fired.copy_(state)
