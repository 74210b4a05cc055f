"""Scenario files: loading, validation with file/line/field errors, and typed steps."""

from harness.scenario.load import STEP_KINDS, load_scenario
from harness.scenario.spec import (
    BootStep,
    CheckStep,
    Expect,
    ExpectedFinding,
    GuestSpec,
    InjectStep,
    MachineSpec,
    ReleaseStep,
    Scenario,
    ShellStep,
    SlotSpec,
    Step,
    StepSpec,
    Timeouts,
    TouchSpec,
    WaitStep,
    WorkloadStep,
)

__all__ = ["load_scenario", "STEP_KINDS", "Scenario", "Step", "StepSpec", "BootStep",
           "ShellStep", "WaitStep", "WorkloadStep", "CheckStep", "InjectStep", "ReleaseStep",
           "SlotSpec", "TouchSpec", "GuestSpec", "MachineSpec", "Timeouts", "Expect",
           "ExpectedFinding"]
