import os

from hypothesis import HealthCheck, settings

# CI draws the same examples every run (a failure reproduces); HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The test models are tiny: one thread is faster than several (no cross-thread sync per op) and does not
# oversubscribe a busy 2-core CI machine. HF_BATCHSPEC_TEST_THREADS overrides it.
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("HF_BATCHSPEC_TEST_THREADS", "1")))

# The device round's snapshot is read a round late on CUDA only (a CPU has run the round when its call returns);
# the suite reads it late on the CPU too, so that every compiled test runs the lagged bookkeeping.
from hf_batchspec import device_round  # noqa: E402

device_round.LAGGED_DEVICES = ("cuda", "cpu")

# The compiled pair and its warm-up, shared by every compiled test module (tests/toolkit/compiled.py).
from tests.toolkit.compiled import compiled_pair, warmed  # noqa: E402, F401 (fixtures)
