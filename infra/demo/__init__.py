"""``s2a demo``: the whole product once, end to end, on bundled samples (see
:mod:`infra.demo.run` for the steps, :mod:`infra.demo.report` for the HTML report)."""

from infra.demo.run import DemoResult, run_demo
from infra.demo.samples import SAMPLES, Sample, load_references

__all__ = ["SAMPLES", "DemoResult", "Sample", "load_references", "run_demo"]
