"""`tether` command line: each subcommand parses its config and hands it to one function.

User mistakes (config, data, paths) end with one line on stderr and exit code 2; a diverged
run, or a pipeline stopped by a reward model at chance, ends with exit code 1; none prints a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tether import __version__
from tether.config import (
    PIPELINE_WIRED,
    DPOConfig,
    EvalConfig,
    KTOConfig,
    LabelAnnotatorConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelServeConfig,
    LabelStatsConfig,
    PipelineConfig,
    PPOConfig,
    PushConfig,
    ReportConfig,
    RMConfig,
    SampleConfig,
    ScoreConfig,
    SFTConfig,
    SimulateLabelsConfig,
    field_docs,
    given_settings,
    load_config,
    to_yaml,
)
from tether.errors import Interrupted, TrainingDiverged, UserError, WeakRewardModel
from tether.presets import pipeline_sources


@dataclass
class Stage:
    config: type
    entry: str  # "module:function", imported only when the command runs (keeps --help fast)
    summary: str
    example: str
    bare: str = ""  # metavar of an optional bare argument (not key=value), e.g. RUN_DIR
    bare_key: str = "run_dir"  # the config key the bare argument sets
    override: str = "optim.lr=1e-5"  # an override valid for this command, for its --help


# A name with a space is a sub-command of a group ("label simulate").
STAGES = {
    "sft": Stage(SFTConfig, "tether.trainers.sft:train",
                 "supervised fine-tuning on demonstrations (loss on response tokens only)",
                 "tether sft --config configs/sft_example.yaml optim.lr=1e-5"),
    "sample": Stage(SampleConfig, "tether.sample:run",
                    "sample K responses per prompt from a policy into candidates.jsonl",
                    "tether sample policy=runs/sft-example/final prompts=prompts.jsonl k=4",
                    override="k=8"),
    "label simulate": Stage(
        SimulateLabelsConfig, "tether.labeling.commands:simulate_labels",
        "label candidates with a simulated labeler (noisy Bradley-Terry on a gold score)",
        "tether label simulate candidates=runs/sample/candidates.jsonl temperature=0.3",
        override="temperature=0.3"),
    "label import": Stage(
        LabelImportConfig, "tether.labeling.commands:import_candidates",
        "import candidates (to compare or rate) into a labeling project, new or (add=true) "
        "existing, with gold items, guidelines and active sampling",
        "tether label import project=sentiment candidates=runs/sample/candidates.jsonl "
        "overlap=3 gold_items=gold.jsonl", override="overlap=3"),
    "label add-annotator": Stage(
        LabelAnnotatorConfig, "tether.labeling.commands:add_annotator",
        "create an annotator (or an admin) and print their access token",
        "tether label add-annotator name=alice", override="name=alice"),
    "label serve": Stage(
        LabelServeConfig, "tether.labeling.commands:serve",
        "serve the labeling web app: people compare, rank or rate responses in the browser",
        "tether label serve db=runs/label/labels.db port=8000", override="port=8080"),
    "label stats": Stage(
        LabelStatsConfig, "tether.labeling.commands:stats",
        "label quality: gold accuracy per annotator, Cohen's kappa, Krippendorff's alpha, "
        "position bias",
        "tether label stats project=sentiment", override="project=sentiment"),
    "label export": Stage(
        LabelExportConfig, "tether.labeling.commands:export",
        "export labels as preference pairs/rankings for `tether rm` and `tether dpo`, or as "
        "KTO rows (format=kto)",
        "tether label export output=labels.jsonl min_gold_accuracy=0.7",
        override="min_gold_accuracy=0.7"),
    "rm": Stage(RMConfig, "tether.trainers.rm:train",
                "train a reward model on preference pairs or K-way rankings (Bradley-Terry)",
                "tether rm --config configs/rm_example.yaml"),
    "dpo": Stage(DPOConfig, "tether.trainers.dpo:train",
                 "train a policy directly on preference pairs or rankings (DPO, IPO, SLiC, "
                 "robust DPO)",
                 "tether dpo --config configs/dpo_example.yaml dpo.beta=0.05"),
    "kto": Stage(KTOConfig, "tether.trainers.kto:train",
                 "train a policy on unpaired thumbs up / down: {prompt, completion, label} "
                 "rows (KTO)",
                 "tether kto --config configs/kto_example.yaml kto.desirable_weight=1.33"),
    "ppo": Stage(PPOConfig, "tether.trainers.ppo:train",
                 "online RL against a reward model or gold scorer: PPO with a KL penalty to "
                 "the reference, or GRPO / RLOO (algo=grpo|rloo)",
                 "tether ppo --config configs/ppo_example.yaml algo=rloo rollout.group_size=4"),
    "score": Stage(ScoreConfig, "tether.score:run",
                   "score (prompt, response) rows with a trained reward model",
                   "tether score reward_model=runs/rm/final input=candidates.jsonl",
                   override="batch_size=32"),
    "run": Stage(PipelineConfig, "tether.pipeline:run",
                 "the whole pipeline, resumable: SFT -> sample -> label -> reward model -> PPO "
                 "and DPO -> evaluation -> report.html. PIPELINE: a YAML file (layered on the "
                 "default; paths in it are relative to it) or a preset: default, quick, "
                 "smoke (tiny random models, every stage in ~20 s on 2 cores: `tether run "
                 "smoke --config my_pipeline.yaml` checks a task of your own end to end)",
                 "tether run quick    # or: tether run my_pipeline.yaml ppo.optim.lr=2e-5",
                 bare="PIPELINE", override="ppo.optim.lr=2e-5"),
    "report": Stage(ReportConfig, "tether.report.collect:run",
                    "write report.html for a run directory (`tether run`'s, or that of tether "
                    "sft, rm, dpo or ppo), finished or not",
                    "tether report runs/pipeline", bare="RUN_DIR",
                    override="run_dir=runs/pipeline"),
    "eval": Stage(EvalConfig, "tether.evaluate:run",
                  "evaluate policies by sampling: gold score, proxy reward, KL to a reference, "
                  "win rate",
                  "tether eval policies=runs/sft/final,runs/dpo/final reference=runs/sft/final "
                  "prompts=prompts.jsonl n=4", override="n=4"),
    "push": Stage(PushConfig, "tether.hub:push",
                  "upload a final/ directory (weights, tokenizer, model card) to the Hugging "
                  "Face Hub; needs a network and a token",
                  "tether push runs/sft/final repo=me/my-sft-model", bare="PATH",
                  bare_key="path", override="private=false"),
}


def _options_help(cls: type, defaults: object = None, hidden: frozenset[str] = frozenset()
                  ) -> str:
    lines = ["config keys (set in the YAML file, or as key=value after it):"]
    for key, type_name, default, help in field_docs(cls, defaults=defaults):
        if key in hidden:
            continue
        shown = json.dumps(default)  # YAML spelling: true/false, "text", numbers
        lines.append(f"  {key} ({type_name}; default {shown})")
        lines += textwrap.wrap(help, width=88, initial_indent="      ",
                               subsequent_indent="      ")
    return "\n".join(lines)


def _pipeline_help() -> str:
    """`tether run`'s keys with the built-in pipeline's values (what a pipeline file starts
    from), leaving out the paths between stages, which the pipeline sets."""
    wired = {f"{stage}.{key}" for stage, keys in PIPELINE_WIRED.items() for key in keys}
    defaults = load_config(PipelineConfig, base=pipeline_sources(None, None)[0])
    return (_options_help(PipelineConfig, defaults, frozenset(wired)) + "\n\n"
            + textwrap.fill("set by the pipeline (the paths from one stage to the next): "
                            + ", ".join(sorted(wired)) + ".", width=88))


def _echo(command: str, cfg: object, path: str | None, overrides: list[str],
          base: list) -> str:
    """What a command prints before it runs: the settings given, not the hundreds of lines of
    defaults around them, and where the whole resolved config is."""
    given = given_settings(cfg, path, overrides)
    rest = "the built-in pipeline's" if command == "run" else "their defaults"
    presets = [Path(p).stem for p in base[1:]]  # base[0]: the built-in default pipeline
    if presets:
        rest += f", with the {', '.join(presets)} preset"
    head = f"# tether {command}: the settings given" + (f" (every other key: {rest})" if given
                                                         else f": none (every key: {rest})")
    # Every command with a run directory but report writes its resolved config there.
    whole = f"{Path(cfg.run_dir) / 'config.yaml'}, or --print-config" \
        if getattr(cfg, "run_dir", "") and command != "report" else "--print-config"
    return "\n".join([head, *([given] if given else []),
                      f"# the whole resolved config: {whole}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether", description="Reinforcement learning from human feedback, end to end.",
        epilog="Run 'tether COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, stage in STAGES.items():
        where, leaf = commands, name
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                group_parser = commands.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest="subcommand",
                                                            metavar="SUBCOMMAND")
            where = groups[group]
        sub = where.add_parser(
            leaf, help=stage.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{stage.summary[0].upper()}{stage.summary[1:]}.\n\n"
                        f"example:\n  {stage.example}",
            epilog=_pipeline_help() if stage.config is PipelineConfig
            else _options_help(stage.config))
        sub.add_argument("-c", "--config", metavar="FILE.yaml",
                         help="YAML config; keys not given keep their defaults. Paths written "
                              "in it are relative to its directory (key=value overrides: to "
                              "the working directory)")
        sub.add_argument("overrides", nargs="*", metavar=f"[{stage.bare}] key=value"
                         if stage.bare else "key=value",
                         help=f"dotted overrides applied after the file, e.g. "
                              f"{stage.override}")
        sub.add_argument("--print-config", action="store_true",
                         help="print the resolved config and exit without running")
        sub.set_defaults(stage=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Options may also come after the key=value overrides; argparse leaves those behind.
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if rest:
        args.overrides += rest
    if getattr(args, "stage", None) is None:
        parser.print_help()
        return 0
    args.command = args.stage
    stage = STAGES[args.stage]
    # A command with a bare argument takes the first word without "=" as it; elsewhere such a
    # word is a malformed override, which load_config names.
    bare = [a for a in args.overrides if "=" not in a][:1] if stage.bare else []
    overrides = [a for a in args.overrides if a not in bare]
    try:
        base, path = [], args.config
        if args.stage == "run":
            base, path = pipeline_sources(bare[0] if bare else None, args.config)
        elif bare:
            overrides.insert(0, f"{stage.bare_key}={bare[0]}")
        cfg = load_config(stage.config, path, overrides, base=base)
        if args.print_config:
            if args.stage == "run":  # as the stages will run: the values the pipeline sets
                cfg = importlib.import_module("tether.pipeline").effective_config(cfg)
            print(f"# tether {args.command}: resolved config\n{to_yaml(cfg)}", flush=True)
            return 0
        print(_echo(args.command, cfg, path, overrides, base), flush=True)
        module, function = stage.entry.split(":")
        getattr(importlib.import_module(module), function)(cfg)
    except UserError as e:
        print(f"tether {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # stdout closed early (`tether ... | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
        return 141  # as a shell reports a command ended by SIGPIPE
    except OSError as e:  # a path the user gave that cannot be read or written
        print(f"tether {args.command}: error: {e.filename or ''}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except (TrainingDiverged, WeakRewardModel) as e:
        print(f"tether {args.command}: stopped: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        # The pipeline resumes its killed stage on a plain rerun; a stage command needs asking.
        again = "rerun the same command" if args.command == "run" else \
            "rerun the same command with resume=true"
        done = f": {e}; {again} to continue from it" if isinstance(e, Interrupted) else \
            f"; {again} to continue from the newest checkpoint, if any"
        print(f"tether {args.command}: interrupted{done}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
