"""Keep the best weights seen on held-out data and stop when they stop improving.

We are data-limited: every training loop selects on held-out frames, and the starting weights are
a candidate too (with little data, training may never beat them).
"""

from __future__ import annotations

import copy

from torch import nn


class EarlyStopping:
    def __init__(self, model: nn.Module, start_value: float, patience: int, higher_is_better: bool) -> None:
        self.model, self.patience, self.higher = model, patience, higher_is_better
        self.best, self.best_state, self.bad = start_value, copy.deepcopy(model.state_dict()), 0

    def update(self, value: float) -> bool:
        """Record one evaluation; True when ``patience`` evaluations in a row did not improve."""
        if (value > self.best) if self.higher else (value < self.best):
            self.best, self.best_state, self.bad = value, copy.deepcopy(self.model.state_dict()), 0
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> float:
        """Load the best weights back into the model; returns their value."""
        self.model.load_state_dict(self.best_state)
        return self.best
