"""Builds the forwarder's optional compiled fast path; the rest is in pyproject.toml.

optional=True: without a C compiler the install still succeeds and the
forwarder runs its pure-Python data path (services/forwarder/fastpath.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "services.forwarder._fastpath",
            ["services/forwarder/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
