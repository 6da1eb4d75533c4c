"""Option types shared by the commands."""
from __future__ import annotations

import math

import click


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and ±inf: every comparison with NaN is false, so FloatRange lets
    it through, and an infinite tolerance, duration or ε only fails later, unclearly."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


#: torch CPU threads (far more than any machine has cores makes the OpenMP runtime fail to allocate their stacks)
THREADS = click.IntRange(min=1, max=1024)
#: random seeds: what torch.manual_seed and numpy take (a signed 64-bit integer), from 0
SEED = click.IntRange(min=0, max=2**63 - 1)
