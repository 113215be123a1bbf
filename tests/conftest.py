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
