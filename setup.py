"""The compiled datapath (issue 20) is an optional extension: without a C compiler the install still
succeeds and the relay runs its Python datapath (and says so in its ready line and counters)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tunlab.relay.fast._cfast", ["tunlab/relay/fast/_cfast.c"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"],
)])
