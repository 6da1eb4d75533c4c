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


class Device(click.ParamType):
    """--device: auto, cpu, cuda (every visible GPU) or cuda:N (GPU N). Only the form is checked here; whether torch
    sees that GPU is checked where the run starts (``pipeline.compute.resolve_device``), in one line."""

    name = "auto|cpu|cuda|cuda:N"

    def convert(self, value, param, ctx):
        from pipeline.compute import DEVICE_FORM  # (imported here: torch is not loaded for --help)

        if isinstance(value, str) and (value == "auto" or DEVICE_FORM.fullmatch(value)):
            return value
        self.fail(f"{value!r} is not a device (auto, cpu, cuda or cuda:N).", param, ctx)


DEVICE = Device()
#: torch CPU threads (far more than any machine has cores makes the OpenMP runtime fail to allocate their stacks)
THREADS = click.IntRange(min=1, max=1024)
#: random seeds: what torch.manual_seed and numpy take (a signed 64-bit integer), from 0
SEED = click.IntRange(min=0, max=2**63 - 1)
