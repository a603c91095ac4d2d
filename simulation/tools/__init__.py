"""The demonstration and evaluation commands: ``resetfree-demos`` (scripted demos in the twin,
teleop recording, EARL import, LeRobot export) and ``resetfree-eval`` (a policy on a robot or
the twin), with the policy files they read and write."""
