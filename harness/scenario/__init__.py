"""Scenario files: loading, validation with file/line/field errors, and typed steps."""

from harness.scenario.load import Scenario, Step, load_scenario, parse_addr, parse_size

__all__ = ["Scenario", "Step", "load_scenario", "parse_addr", "parse_size"]
