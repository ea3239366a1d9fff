import logging
import os
import sys

from tether.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun process: its outputs are written and closed by now. It leaves without the
    # interpreter's finalisation, where gloo's worker threads, still holding tensors, can abort
    # a run that succeeded ("terminate called without an active exception"; PyTorch's teardown,
    # seen about once in 30 runs under load), and without destroying its process group, which
    # lives from the first trainer's setup to here (later stages of a pipeline reuse it).
    # Destroying it was the other hang of PyTorch's teardown: once the group is out of
    # torch.distributed's registry, the DDP reducer freed with its model holds the last
    # reference, and gloo's destructor, run with the GIL held, joins a worker thread that is
    # still freeing a tensor and waits for the GIL (a 2-process PPO test hung so, once).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
