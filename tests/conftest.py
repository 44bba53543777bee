"""The test session's set-up: one computing thread per pytest-xdist worker.

``pytest -n auto`` (the README's test command) runs one worker process per CPU. PyTorch and
BLAS would start one thread per core in each of them: on 2 cores, two workers of two threads,
whose parallel regions wait on each other at every small operation (the collapse
:mod:`conetool.threads` describes, at its worst on a machine busy with other work). A worker computes with one thread instead; the commands the
tests run keep choosing their own (``--threads``, ``threads="auto"``). A plain ``pytest`` run (no
workers) keeps PyTorch's default.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # BLAS libraries loaded later (SciPy's, by the eNTK engine's syrk) read these as they load;
    # threadpool_limits sets those loaded already
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
