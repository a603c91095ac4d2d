"""Fakes of the hardware SDKs (panda-py, pyrealsense2, pyspacemouse).

Each fake follows the real library's public API (names, argument names and defaults) for
every member ``hardware`` uses; ``tests/hardware/test_api_conformance.py`` checks that.
Test hooks that the real libraries do not have start with an underscore.
"""
