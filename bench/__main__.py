"""`python -m bench NAME [options]`: one subcommand per benchmark module.

A benchmark module has a docstring (its first line is the subcommand's help),
`add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse

from bench import (
    cli_startup,
    dpo,
    generation,
    gpu_check,
    gpu_train,
    label,
    peak,
    ppo,
    precision,
    qlora,
    rm,
    rm_quality,
    sample_match,
    scaling,
    sft,
    vs_trl,
)

BENCHMARKS = {"peak": peak, "sft": sft, "rm": rm, "rm-quality": rm_quality, "dpo": dpo,
              "ppo": ppo, "label": label, "precision": precision, "scaling": scaling,
              "generation": generation, "sample-match": sample_match, "vs-trl": vs_trl,
              "gpu-check": gpu_check, "gpu-train": gpu_train,
              "cli-startup": cli_startup, "qlora": qlora}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Benchmarks of tether on this machine.")
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module in BENCHMARKS.items():
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0],
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    BENCHMARKS[args.benchmark].run(args)


# The guard matters: bench.sft's worker processes are spawned, and spawn re-imports this module.
if __name__ == "__main__":
    main()
