"""Registers the tiny test model and stream with gin (imported by the test gin files)."""
import gin

from tests.training import tiny

gin.register(tiny.TinyLM, module='tests', denylist=['mode'])
gin.register(tiny.CountingStream, module='tests')
