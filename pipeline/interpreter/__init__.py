"""The linear interpreter engine: y = F(x0)·x + r(x0) for any traceable PyTorch CNN.

    from pipeline.interpreter import interpret
    li = interpret(model, x0)          # x0: (1, C, H, W)
    li.forward(v), li.transpose(u), li.residual, li.contributions(), li.backprojections()
"""
from .errors import InputError, UnsupportedOperation
from .linear import LinearInterpreter, interpret

__all__ = ["interpret", "LinearInterpreter", "UnsupportedOperation", "InputError"]
