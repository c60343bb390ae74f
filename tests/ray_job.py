"""Run one `npu-retu` command line in this process, then say whether Ray is still initialized.

The Ray-driver tests start this as a subprocess (`python tests/ray_job.py sft --config F
cluster.launcher=ray ...`) so that each job gets its own process, as a user's does: Ray cannot be
started and shut down several times in one process safely (its gRPC threads outlive
ray.shutdown(), and the pytest process then crashed at exit now and then). The exit code is the
CLI's; the last line of stdout tells whether the driver shut down the Ray instance it started.
"""

import sys

import ray

from npu_retu.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    print(f"ray initialized after the job: {ray.is_initialized()}", flush=True)
    sys.exit(code)
