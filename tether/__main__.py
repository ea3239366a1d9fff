import logging
import os
import sys

from tether.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun process: its outputs are written and closed by now. It leaves without the
    # interpreter's finalisation, where gloo's worker threads, still holding tensors, can abort
    # a run that succeeded ("terminate called without an active exception"; PyTorch's teardown,
    # seen about once in 30 runs under load), and which an error path reaches with the process
    # group still open.
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
